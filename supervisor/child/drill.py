"""Drills: one real fault injected into the running training on request (``yolo-supervisorctl drill``),
so that a user can see their setup recover before they trust it (NVRx's fault simulation is the model).

The daemon does ``kill`` and ``term`` itself, with real signals. The other kinds happen inside the
training, where only the child can reach: the daemon writes a request file beside the exit record,
and the child takes it (reads and deletes it) at the start of the next training step (the first one
when the attempt is still setting up; the daemon removes a request left over when it plans an attempt):

- ``oom``: torch's OutOfMemoryError is raised from that step (as a CUDA OOM past Ultralytics' own
  first-epoch retries is);
- ``nan``: the loss is non-finite from that step on, for the rest of the attempt;
- ``hang``: the step never returns (the stall rule has to find it);
- ``corrupt``: ``last.pt`` is truncated right after the next save.

Stdlib only at import: the daemon imports the names and the request path from here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

SIGNAL_KINDS = ("kill", "term")        # the daemon signals the job
CHILD_KINDS = ("oom", "nan", "hang", "corrupt")  # the child injects them
KINDS = SIGNAL_KINDS + CHILD_KINDS
REQUEST_NAME = "drill.json"
MARK = "yolo-supervisor drill"


def request_path(exit_record: Path) -> Path:
    """Where the daemon leaves a request for this job's child: the job's folder."""
    return Path(exit_record).with_name(REQUEST_NAME)


def request(path: Path, kind: str, actor: str) -> None:
    """The daemon's side: leave a request for the running child (written as the job's user)."""
    from supervisor.contract import write_json_atomic

    write_json_atomic(path, {"kind": kind, "by": actor, "at": time.time()})


class Drills:
    """The child's side: take a request at a step's start, and act on it."""

    def __init__(self, path: Path, note: Callable[[str], None]):
        self.path = path
        self.note = note
        self.corrupt_after_save = False

    def take(self) -> Optional[dict[str, Any]]:
        if not os.path.exists(self.path):  # one stat a step: the common case
            return None
        try:
            text = self.path.read_text()
            self.path.unlink()
            ask = json.loads(text)
        except (OSError, ValueError):
            return None
        return ask if isinstance(ask, dict) and ask.get("kind") in CHILD_KINDS else None

    def on_step_start(self, trainer) -> None:
        ask = self.take()
        if ask is None:
            return
        kind = ask["kind"]
        self.note(f"drill {kind} (asked by {ask.get('by', '?')}): injected now, in epoch {trainer.epoch + 1}")
        if kind == "oom":
            import torch

            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 20.00 GiB ({MARK})")
        if kind == "nan":
            poison_loss(trainer)
        elif kind == "hang":
            print(f"{MARK}: the training step hangs from now on", file=sys.stderr, flush=True)
            while True:  # a real freeze: SIGTERM's handler only sets a flag, the step never ends
                time.sleep(3600)
        elif kind == "corrupt":
            self.corrupt_after_save = True

    def after_save(self, trainer) -> None:
        if not self.corrupt_after_save:
            return
        self.corrupt_after_save = False
        last = Path(trainer.last)
        size = last.stat().st_size
        os.truncate(last, size // 2)
        self.note(f"drill corrupt: {last.name} truncated from {size} to {size // 2} bytes after its save")


def poison_loss(trainer) -> None:
    """From now on the model's loss is NaN: the forward pass, the gradients and the weights follow."""
    from ultralytics.utils.torch_utils import unwrap_model

    model = unwrap_model(trainer.model)
    loss_fn = model.loss

    def poisoned(*args, **kwargs):
        loss, items = loss_fn(*args, **kwargs)
        nan = float("nan")
        if isinstance(items, dict):
            items = {k: v * nan for k, v in items.items()}
        else:
            items = items * nan
        return loss * nan, items

    model.loss = poisoned  # an instance attribute: BaseModel.forward(batch) calls self.loss(batch)
