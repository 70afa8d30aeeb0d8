"""The stop protocol: what the child does when the daemon (or Slurm) sends SIGTERM.

The handler only sets a flag (or, before any batch, exits at once: nothing to save); the training's
callbacks act on it at the next batch end or epoch end: save a resumable checkpoint and exit with
PREEMPTED_EXIT_CODE. Under DDP all ranks agree to stop after the same batch, rank 0 saves once and
every rank waits for its save (child/ddp.py). Ultralytics itself saves nothing on SIGTERM, and
``trainer.stop`` would strip last.pt, so it is never used.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Protocol

from supervisor.child import ddp
from supervisor.contract import read_json
from supervisor.jobs.states import PREEMPTED_EXIT_CODE
from supervisor.process.torchrun import is_torch_launcher


class StopReporter(Protocol):
    """What the stop protocol uses of the attempt's reporter (child/reporter.py: Reporter)."""

    path: Path
    exit_path: Path
    stop_path: Path
    state: dict[str, Any]
    preempt_requested: bool
    rank: Optional[int]

    @property
    def writes(self) -> bool: ...
    @property
    def tag(self) -> str: ...
    def beat(self, force: bool = False, **values: Any) -> None: ...
    def exit_record(self, code: int, **extra: Any) -> None: ...
    def adopt_rank_progress(self) -> None: ...


def save_resumable(trainer, rep: StopReporter) -> None:
    """Save a checkpoint whose epoch is the last *completed* one, so resume redoes this epoch."""
    rep.beat(force=True, phase="saving_for_preemption")
    trainer.epoch -= 1
    try:
        if trainer.epoch >= 0:  # nothing completed yet in epoch 1: nothing worth saving
            trainer.save_model()
            rep.state["saved_epochs_done"] = trainer.epoch + 1
    finally:
        trainer.epoch += 1


def save_resumable_and_exit(trainer, rep: StopReporter) -> None:
    try:
        save_resumable(trainer, rep)
    except Exception as exc:  # noqa: BLE001 - raised out of the callback, _never_raises would swallow it
        exit_save_failed(rep, exc)
    exit_preempted(rep, "mid-epoch save")


def ranks_agree_to_stop(trainer, rep: StopReporter) -> bool:
    """Every DDP rank calls this at the same point; True on all of them when any was asked to stop
    (its own SIGTERM, or the launcher parent's stop request for a TERM that missed the ranks)."""
    local = rep.preempt_requested or ddp.stop_requested(rep.stop_path)
    rep.preempt_requested = ddp.agree(local, trainer.device)
    return rep.preempt_requested


def stop_ranks_and_exit(trainer, rep: StopReporter, save: bool) -> None:
    """All ranks stop here, after the same batch (or epoch end): rank 0 saves once, all wait until its
    save and exit record are on disk (a rank that exits makes torchrun tear the others down), then
    every rank exits 75 (rank 0: 1 when its save failed)."""
    where = f"epoch {rep.state['epoch']} batch {rep.state['batch']}/{rep.state['batches']}"
    print(f"{rep.tag}: SIGTERM: all {ddp.world_size()} ranks stop after {where}", file=sys.stderr, flush=True)
    code = _save_and_record_for_all_ranks(trainer, rep, save, where) if rep.writes else PREEMPTED_EXIT_CODE
    ddp.barrier(trainer.device)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _save_and_record_for_all_ranks(trainer, rep: StopReporter, save: bool, where: str) -> int:
    """Rank 0's part: the epoch-level save (as a single process without mid-epoch support does) and
    the exit record the launcher parent will end with."""
    try:
        if save:
            save_resumable(trainer, rep)
    except Exception as exc:  # noqa: BLE001 - the other ranks still wait at the barrier
        message = f"save on SIGTERM failed: {exc}"[:2000]
        rep.beat(force=True, phase="preempted")
        rep.exit_record(1, exception=type(exc).__name__, message=message)
        print(f"{rep.tag}: {message}; exiting 1", file=sys.stderr, flush=True)
        return 1
    done = rep.state["saved_epochs_done"]
    how = (f"DDP: all {ddp.world_size()} ranks stopped after {where}; "
           + (f"epoch-level checkpoint, epochs done: {done}" if done else "no epoch completed yet"))
    rep.beat(force=True, phase="preempted")
    rep.exit_record(PREEMPTED_EXIT_CODE, preempted=how)
    print(f"{rep.tag}: {how}; exiting {PREEMPTED_EXIT_CODE}", file=sys.stderr, flush=True)
    return PREEMPTED_EXIT_CODE


def exit_save_failed(rep: StopReporter, exc: BaseException) -> None:
    """SIGTERM asked for a save and it failed: end the attempt (exit 1) saying so, never train on."""
    rep.beat(force=True, phase="preempted")
    rep.exit_record(1, exception=type(exc).__name__, message=f"save on SIGTERM failed: {exc}"[:2000])
    print(f"yolo-supervisor: SIGTERM received; the save failed ({exc!r}); exiting 1", file=sys.stderr, flush=True)
    os._exit(1)


def exit_preempted(rep: StopReporter, how: str) -> None:
    rep.beat(force=True, phase="preempted")
    rep.exit_record(PREEMPTED_EXIT_CODE, preempted=how)
    sys.stdout.flush()
    sys.stderr.flush()
    print(f"{rep.tag}: SIGTERM received; resumable checkpoint saved ({how}); exiting "
          f"{PREEMPTED_EXIT_CODE}", file=sys.stderr, flush=True)
    os._exit(PREEMPTED_EXIT_CODE)


def install_sigterm(rep: StopReporter) -> None:
    def handler(signum, frame):
        if rep.rank is None and _ddp_launched(rep):
            # The launcher parent: the ranks save and stop, torchrun exits after them and Ultralytics'
            # subprocess.run returns here. Exiting now would get the ranks SIGKILLed mid-save as leftovers.
            rep.preempt_requested = True
            ddp.request_stop(rep.stop_path)
            return
        if rep.state["first_batch_at"] is None and rep.state["phase"] == "setup":
            # Nothing trained in this attempt yet: nothing to save.
            exit_preempted(rep, "before training")
        rep.preempt_requested = True  # acted on at the next batch end (or epoch end)

    signal.signal(signal.SIGTERM, handler)


def _ddp_launched(rep: StopReporter) -> bool:
    """Whether Ultralytics launched DDP ranks from this process: torchrun runs, or it has run (rank 0
    reported). Decided from what runs, not from the device string, which Ultralytics interprets."""
    return ddp.launcher_running() or bool((read_json(rep.path) or {}).get("ddp"))


def ddp_launch_failed(rep: StopReporter, exc: BaseException) -> Optional[int]:
    """Ultralytics' DDP launch (torchrun) exited non-zero: the code this attempt ends with, or None for
    an ordinary failure (recorded by the caller). Rank 0's exit record, when it wrote one (75 after a
    save on SIGTERM, 1 when that save failed), is this attempt's record and is kept as it is."""
    if not (isinstance(exc, subprocess.CalledProcessError) and is_torch_launcher([str(a) for a in exc.cmd or ()])):
        return None
    record = read_json(rep.exit_path) or {}
    if record.get("rank") == 0 and isinstance(record.get("exit_code"), int):
        return record["exit_code"]
    rep.adopt_rank_progress()
    if rep.preempt_requested and rep.state["first_batch_at"] is None:
        # Our SIGTERM ended the ranks before any batch (their handler was not installed yet): nothing to save.
        exit_preempted(rep, "before training (DDP ranks stopped during setup)")
    return None
