"""The daemon <-> child contract, in one place: three JSON files in the job's folder.

- ``Plan`` (attempt.json): what the daemon asks of one attempt; written by the daemon, read by
  the child (``python -m supervisor.child.train PLAN``).
- ``Progress`` (progress.json): what the child reports while it trains, throttled; read by the
  daemon every tick (stall rule, status, goodput, the run directory).
- ``ExitRecord`` (exit.json): how the child ended, written on its way out, so that an attempt
  re-adopted after a daemon restart (whose exit status is not ours to read) is still classified.

Progress and the exit record are written by the job's user, so the daemon reads them as untrusted
input: ``from_json`` keeps a value only when it has the field's type (a string where a number
belongs, a list for a path: the field's default), ignores keys it does not know (a newer child)
and fills defaults for missing ones (an older one). Nothing a child writes can raise in the daemon.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar, Union

T = TypeVar("T")


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
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if origin in (list, dict):
        return isinstance(value, origin)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, hint)
