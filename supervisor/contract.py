"""The daemon <-> child contract, in one place: three JSON files in the job's folder.

- ``Plan`` (attempt.json): what the daemon asks of one attempt; written by the daemon, read by
  the child (``python -m supervisor.child.train PLAN``).
- ``Progress`` (progress.json): what the child reports while it trains, throttled; read by the
  daemon every tick (stall rule, status, goodput, the run directory).
- ``ExitRecord`` (exit.json): how the child ended, written on its way out, so that an attempt
  re-adopted after a daemon restart (whose exit status is not ours to read) is still classified.

and the names both sides use for the checkpoints the child writes beside Ultralytics' own
(``MIDEPOCH_NAME``, ``FINAL_RESUMABLE_NAME``) and for the plain keys in them that the daemon reads
without torch (``MIDEPOCH_KEY``, ``FINITE_KEY``). The three JSON files are written with
``write_json_atomic`` and read with ``read_json`` (safefs: a temp name and a rename, no link followed).

Progress and the exit record are written by the job's user, so the daemon reads them as untrusted
input: ``from_json`` keeps a value only when it has the field's type (a string where a number
belongs, a list for a path: the field's default), ignores keys it does not know (a newer child)
and fills defaults for missing ones (an older one). Nothing a child writes can raise in the daemon.
Types are checked with their ranges and sizes (``_fits``): an int within ``MAX_INT`` (a product of
two fits SQLite's 64-bit integer), a finite float within ``MAX_FLOAT``, every element of a list or
dict, at most ``MAX_ITEMS`` of them, strings of at most ``MAX_TEXT`` characters (a longer path is no
path, and a cut one could name another folder).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

from supervisor import safefs

T = TypeVar("T")

# Files the child writes in the run's weights folder, beside last.pt.
MIDEPOCH_NAME = "midepoch.pt"                # the mid-epoch state; not "last*" (get_latest_run globs last*.pt)
FINAL_RESUMABLE_NAME = "resumable-final.pt"  # last.pt as it was before the final strip (for `extend`)
# Plain top-level keys of the checkpoints the child writes, read by the daemon's verifier.
MIDEPOCH_KEY = "yolo_supervisor_midepoch"    # midepoch.pt: the position and what the resume restores
FINITE_KEY = "yolo_supervisor_finite"        # every checkpoint: were the weights finite when saved
# Ultralytics' save_model replaces NaN/Inf before it writes, so the file alone cannot tell.

MAX_JSON_BYTES = 1 << 20  # a progress file is a few KiB; anything bigger is not one


@dataclass
class Plan:
    job: str
    attempt: int
    epochs: int
    train: dict[str, Any]                 # the spec's train arguments with the daemon's device, project, name
    resume: Optional[str] = None          # the checkpoint to resume from; None: a fresh start
    overrides: dict[str, Any] = field(default_factory=dict)  # what a resume applies over the checkpoint
    checkpoint_every_s: float = 0.0       # mid-epoch checkpoints: seconds between saves; 0 = off
    extend_epochs: Optional[int] = None   # `extend`: rewrite the checkpoint's epochs to this first
    progress_file: str = ""
    exit_record: str = ""
    # {"ids", "attempts", "settings"}: the job's tracker runs to continue (supervisor/jobs/trackers.py)
    trackers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Progress:
    pid: Optional[int] = None
    attempt: Optional[int] = None
    phase: str = "setup"                  # setup, training, validating, epoch_end, saving_..., preempted, finished
    started_at: Optional[float] = None
    updated_at: Optional[float] = None
    last_beat_at: Optional[float] = None
    epochs: Optional[int] = None
    epoch: Optional[int] = None           # the epoch under way, 1-based
    batch: Optional[int] = None           # batches trained in it
    batches: Optional[int] = None         # the epoch's length in batches
    losses: Optional[dict[str, float]] = None
    first_batch_at: Optional[float] = None   # when this attempt trained its first batch
    max_gap_s: float = 0.0                # the longest silence between heartbeats while training
    saved_epochs_done: Optional[int] = None
    last_save_at: Optional[float] = None
    epoch_times: list[float] = field(default_factory=list)
    epoch_started_at: Optional[float] = None
    save_dir: Optional[str] = None        # where Ultralytics trains: believed only inside the job's runs folder
    batch_size: Optional[int] = None
    midepoch: Optional[dict[str, Any]] = None       # {"supported": bool, "why": str}
    last_midepoch: Optional[dict[str, Any]] = None  # {"epoch", "next_batch", "batches", "at", "seconds", "size"}
    resumed_at: Optional[dict[str, Any]] = None     # {"epoch", "batch"}: where this attempt's training began
    notes: list[str] = field(default_factory=list)  # one-line notes for the history
    startup: dict[str, float] = field(default_factory=dict)  # seconds from the process start to each setup step
    ddp: Optional[dict[str, Any]] = None            # {"rank", "world_size", "pid"} when rank 0 of a DDP run writes
    trackers: Optional[dict[str, Any]] = None       # tracker -> {"id", "url"}: the runs this attempt logs to


@dataclass
class ExitRecord:
    exit_code: Optional[int] = None
    at: Optional[float] = None
    reached_training: bool = False
    phase: Optional[str] = None
    exception: Optional[str] = None       # the exception's type name
    message: Optional[str] = None
    traceback: Optional[str] = None
    preempted: Optional[str] = None       # how a SIGTERM ended it ("mid-epoch save at ...")
    rank: Optional[int] = None            # written by rank 0 of a DDP run (its launcher keeps it)


def to_json(value: Any) -> dict[str, Any]:
    return dataclasses.asdict(value)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """The plan, progress and exit record are their job owner's alone (0600). A random temp name
    created exclusively and a rename: the daemon never reads half a file, and a root daemon never
    writes through a link planted at a predictable name in the user's folder."""
    safefs.write_atomic(path, json.dumps(data).encode(), mode=0o600)


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """The file's content, or None when missing, unreadable, a link or not plain JSON (never raises)."""
    try:
        data = json.loads(safefs.read_regular(path, MAX_JSON_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


# Ranges and sizes of what a child may write (its own lists hold 20 notes and 50 epoch times,
# its traceback 4000 characters). Counts, epochs, batches and pids are far below MAX_INT; times
# (epoch seconds) and durations below MAX_FLOAT.
MAX_INT = 2**31 - 1
MAX_FLOAT = 1e12
MAX_ITEMS = 1000           # elements of one list or dict
MAX_TEXT = 8192            # characters of one string (a path is at most 4096 bytes)
MAX_ANY_NODES = 10_000     # values in one free-form (``Any``) field, nested ones included


def from_json(cls: type[T], data: Any) -> Optional[T]:
    """An instance from a JSON object, keeping only well-typed values; None for a non-object."""
    if not isinstance(data, dict):
        return None
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data and _fits(data[f.name], hints[f.name]):
            values[f.name] = data[f.name]
    try:
        return cls(**values)
    except TypeError:  # a required field missing or ill-typed (only Plan has them)
        return None


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type ``hint`` names, within the ranges and sizes above."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return _plain(value, [MAX_ANY_NODES])
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and len(value) <= MAX_ITEMS and all(_fits(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint) or (str, Any)
        return (isinstance(value, dict) and len(value) <= MAX_ITEMS
                and all(_fits(k, key) and _fits(v, item) for k, v in value.items()))
    return _fits_scalar(value, hint)


def _fits_scalar(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and -MAX_INT <= value <= MAX_INT
    if hint is float:
        # an int too: a 400-digit one is compared, never converted (math.isfinite would overflow)
        if isinstance(value, int) and not isinstance(value, bool):
            return -MAX_FLOAT <= value <= MAX_FLOAT
        return isinstance(value, float) and math.isfinite(value) and -MAX_FLOAT <= value <= MAX_FLOAT
    if hint is str:
        return isinstance(value, str) and len(value) <= MAX_TEXT
    return isinstance(value, hint)


def _plain(value: Any, budget: list[int]) -> bool:
    """A free-form JSON value: bounded in count (``budget`` is shared down the tree), numbers in range."""
    budget[0] -= 1
    if budget[0] < 0:
        return False
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, str):
        return len(value) <= MAX_TEXT
    if isinstance(value, (int, float)):
        return _fits_scalar(value, float)
    if isinstance(value, list):
        return len(value) <= MAX_ITEMS and all(_plain(v, budget) for v in value)
    if isinstance(value, dict):
        return len(value) <= MAX_ITEMS and all(_fits_scalar(k, str) and _plain(v, budget) for k, v in value.items())
    return False
