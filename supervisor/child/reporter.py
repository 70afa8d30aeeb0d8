"""The attempt's progress file and exit record, written from inside the training.

One ``Reporter`` per process: it keeps the progress (the contract's ``Progress`` fields, nothing
else), writes it throttled, and writes the exit record on the way out. Under DDP only rank 0 writes;
a copy unpickled in a rank installs that rank's SIGTERM handler (child/stop.py).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from supervisor.child import ddp
from supervisor.child.drill import Drills, request_path
from supervisor.child.stop import install_sigterm
from supervisor.contract import ExitRecord, Plan, Progress, read_json, to_json, write_json_atomic

PROGRESS_INTERVAL_S = 2.0
PROGRESS_FIELDS = frozenset(f.name for f in dataclasses.fields(Progress))


class Reporter:
    """Tracks the attempt's progress and writes it to the progress file, throttled."""

    def __init__(self, plan: Plan):
        self.path = Path(plan.progress_file)
        self.exit_path = Path(plan.exit_record)
        # The fields are the contract's (supervisor/contract.py: Progress); beat() refuses others.
        now = time.time()
        self.state: dict[str, Any] = to_json(Progress(pid=os.getpid(), attempt=plan.attempt, started_at=now,
                                                      epochs=plan.epochs, last_beat_at=now))
        self._born = _process_start_time()
        self._last_write = 0.0
        self._epoch_start = None
        self.preempt_requested = False
        self.failed_callbacks: set[str] = set()
        self.rank: Optional[int] = None  # None: this process trains alone, or launches the DDP ranks
        self.stop_path = ddp.stop_request_path(self.exit_path)
        self.drills = Drills(request_path(self.exit_path), self.note)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A copy unpickled in a DDP rank (Ultralytics ships our callbacks to every rank): the first code
        of ours that runs there, and before any trainer setup, so each rank gets its SIGTERM handler here."""
        self.__dict__.update(state)
        self.rank = ddp.current_rank()
        if self.rank is not None:
            self.state["ddp"] = {"rank": self.rank, "world_size": ddp.world_size(), "pid": os.getpid()}
            install_sigterm(self)

    @property
    def writes(self) -> bool:
        """Only one process writes the progress file and the exit record: rank 0 under DDP."""
        return self.rank in (None, 0)

    @property
    def tag(self) -> str:
        return "yolo-supervisor" if self.rank is None else f"yolo-supervisor (rank {self.rank})"

    def beat(self, force: bool = False, **values: Any) -> None:
        now = time.time()
        gap = now - self.state["last_beat_at"]
        if self.state["phase"] in ("training", "validating"):
            self.state["max_gap_s"] = max(self.state["max_gap_s"], gap)
        unknown = values.keys() - PROGRESS_FIELDS
        if unknown:
            raise ValueError(f"not fields of the progress contract: {sorted(unknown)}")
        self.state.update(values, last_beat_at=now, updated_at=now)
        if self.writes and (force or now - self._last_write >= PROGRESS_INTERVAL_S):
            write_json_atomic(self.path, self.state)
            self._last_write = now

    def mark(self, step: str) -> None:
        """When a setup step ended, in seconds since the process started (benchmarks read these)."""
        if step not in self.state["startup"]:
            self.state["startup"][step] = round(time.time() - self._born, 3)

    def note(self, line: str) -> None:
        if self.writes:  # one line per job, not one per rank
            print(f"{self.tag}: {line}", file=sys.stderr, flush=True)
        self.state["notes"] = (self.state["notes"] + [line])[-20:]
        self.beat(force=True)

    def exit_record(self, code: int, **extra: Any) -> None:
        if not self.writes:
            return
        # rank: the launcher parent keeps a record rank 0 wrote (ddp_launch_failed)
        record = ExitRecord(exit_code=code, at=time.time(), reached_training=self.state["first_batch_at"] is not None,
                            phase=self.state["phase"], rank=self.rank, **extra)
        write_json_atomic(self.exit_path, to_json(record))

    def adopt_rank_progress(self) -> None:
        """In the launcher parent: what rank 0 reported (its batches are this attempt's training)."""
        reported = read_json(self.path) or {}
        if reported.get("ddp"):
            self.state.update(first_batch_at=reported.get("first_batch_at"), phase=reported.get("phase"))


def _process_start_time() -> float:
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - only a benchmark figure depends on it
        return time.time()
