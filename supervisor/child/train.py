"""Entry point of one training attempt: ``python -m supervisor.child.train PLAN.json``.

Runs Ultralytics in this process and adds what the daemon needs from inside:
- a progress file (phase, epoch, batch i/n, losses, heartbeat gaps), throttled;
- mid-epoch checkpoints every ``checkpoint_every`` seconds and exact mid-epoch resume
  (supervisor/child/midepoch.py), behind a version check with an epoch-level fallback;
- SIGTERM handling: save a mid-epoch checkpoint at the next batch end (after the next
  optimizer step) and exit with PREEMPTED_EXIT_CODE (Ultralytics itself saves nothing
  on SIGTERM, and ``trainer.stop`` would strip last.pt, so it is never used);
- an exit record (exit code, exception, whether training was reached) so a
  re-adopted attempt's end can still be classified.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from supervisor.child.midepoch import MidEpoch, support_problem
from supervisor.child.progress import write_json_atomic
from supervisor.jobs.states import PREEMPTED_EXIT_CODE
from supervisor.probes.checkpoint import inspect_checkpoint

PROGRESS_INTERVAL_S = 2.0


class Reporter:
    """Tracks the attempt's progress and writes it to the progress file, throttled."""

    def __init__(self, plan: dict[str, Any]):
        self.path = Path(plan["progress_file"])
        self.exit_path = Path(plan["exit_record"])
        self.state: dict[str, Any] = {
            "pid": os.getpid(), "attempt": plan["attempt"], "phase": "setup",
            "started_at": time.time(), "epochs": plan.get("epochs"),
            "epoch": None, "batch": None, "batches": None, "losses": None,
            "first_batch_at": None, "last_beat_at": time.time(), "max_gap_s": 0.0,
            "saved_epochs_done": None, "last_save_at": None, "epoch_times": [],
            "save_dir": None, "batch_size": None, "epoch_started_at": None,
            "midepoch": None,          # {"supported": bool, "why": str}: once, for the job's history
            "last_midepoch": None,     # {"epoch", "next_batch", "at", "seconds", "size"} of the last save
            "resumed_at": None,        # {"epoch", "batch"}: where this attempt's training began (1-based epoch)
            "notes": [],               # one-line notes for the history (fallbacks, inexact resumes)
            "startup": {},             # seconds from the process start to each setup step (where restarts go)
        }
        self._born = _process_start_time()
        self._last_write = 0.0
        self._epoch_start = None
        self.preempt_requested = False
        self.failed_callbacks: set[str] = set()

    def beat(self, force: bool = False, **values: Any) -> None:
        now = time.time()
        gap = now - self.state["last_beat_at"]
        if self.state["phase"] in ("training", "validating"):
            self.state["max_gap_s"] = max(self.state["max_gap_s"], gap)
        self.state.update(values, last_beat_at=now, updated_at=now)
        if force or now - self._last_write >= PROGRESS_INTERVAL_S:
            write_json_atomic(self.path, self.state)
            self._last_write = now

    def mark(self, step: str) -> None:
        """When a setup step ended, in seconds since the process started (benchmarks read these)."""
        if step not in self.state["startup"]:
            self.state["startup"][step] = round(time.time() - self._born, 3)

    def note(self, line: str) -> None:
        print(f"yolo-supervisor: {line}", file=sys.stderr, flush=True)
        self.state["notes"] = (self.state["notes"] + [line])[-20:]
        self.beat(force=True)

    def exit_record(self, code: int, **extra: Any) -> None:
        record = {"exit_code": code, "at": time.time(), "reached_training": self.state["first_batch_at"] is not None,
                  "phase": self.state["phase"], **extra}
        write_json_atomic(self.exit_path, record)


def _install_callbacks(model, rep: Reporter, mid: Optional[MidEpoch]) -> None:
    def on_pretrain_routine_start(trainer):
        rep.mark("trainer_created")
        if mid is not None:
            mid.install(trainer)
        rep.beat(force=True, save_dir=str(trainer.save_dir), batch_size=int(trainer.args.batch))

    def on_pretrain_routine_end(trainer):
        rep.mark("setup_done")  # model, dataset and label cache, dataloaders, optimizer, resume

    def on_train_epoch_start(trainer):
        rep.mark("first_epoch_start")
        rep._epoch_start = time.time()
        first = mid.enumerate_start(trainer.train_loader) if mid is not None else 0
        if rep.state["resumed_at"] is None:
            rep.state["resumed_at"] = {"epoch": trainer.epoch + 1, "batch": first}
        rep.beat(force=True, phase="training", epoch=trainer.epoch + 1, epochs=trainer.epochs, batch=first,
                 save_dir=str(trainer.save_dir), epoch_started_at=rep._epoch_start)

    def on_train_batch_start(trainer):
        if mid is not None:
            mid.on_batch_start(trainer)

    def on_train_batch_end(trainer):
        first_of_attempt = rep.state["first_batch_at"] is None
        if first_of_attempt:
            rep.state["first_batch_at"] = time.time()
            rep.mark("first_batch")
        i = (rep.state["batch"] or 0) + 1
        losses = _losses(getattr(trainer, "tloss", None))
        # The first batch of each epoch is always written: it marks the epoch as under way.
        rep.beat(force=first_of_attempt or i == 1, batch=i, batches=len(trainer.train_loader), losses=losses)
        if mid is None:
            if rep.preempt_requested:
                _save_resumable_and_exit(trainer, rep)
            return
        if mid.due(rep.preempt_requested):
            saved = _save_midepoch(trainer, rep, mid)
            if saved and rep.preempt_requested:
                _exit_preempted(rep, f"mid-epoch save at epoch {saved['epoch'] + 1} batch {saved['next_batch']}")

    def on_train_epoch_end(trainer):
        rep.beat(force=True, phase="validating")

    def on_val_batch_end(validator):
        rep.beat()

    def on_model_save(trainer):
        if mid is not None:
            mid.epoch_saved()
        rep.beat(force=True, saved_epochs_done=trainer.epoch + 1, last_save_at=time.time())

    def on_fit_epoch_end(trainer):
        if rep._epoch_start is not None:
            rep.state["epoch_times"] = (rep.state["epoch_times"] + [round(time.time() - rep._epoch_start, 3)])[-50:]
        rep.beat(force=True, phase="epoch_end")
        if rep.preempt_requested:
            # The checkpoint just saved holds this whole epoch: leave now.
            _exit_preempted(rep, "after epoch save")

    def on_train_end(trainer):
        rep.beat(force=True, phase="finished")

    for event, fn in dict(locals()).items():
        if event.startswith("on_"):
            # Saving is the point of a preemption: a failure there must end the attempt, not be swallowed.
            wrap = _raises_loudly if event in ("on_pretrain_routine_start", "on_train_batch_start") else _never_raises
            model.add_callback(event, wrap(fn, rep))


def _save_midepoch(trainer, rep: Reporter, mid: MidEpoch) -> Optional[dict]:
    """Write the mid-epoch checkpoint; a failed save is reported, and on SIGTERM ends the attempt."""
    try:
        return mid.save(trainer)
    except Exception as exc:  # noqa: BLE001 - a full disk must not end a training that can go on
        rep.note(f"mid-epoch save failed: {exc!r}")
        if rep.preempt_requested:
            _exit_save_failed(rep, exc)
        mid.epoch_saved()  # try again after another interval, not on every batch
        return None


def _raises_loudly(fn, rep: Reporter):
    """Installing the mid-epoch machinery half-way would train wrongly: let a failure end the attempt."""
    return fn


def _never_raises(fn, rep: Reporter):
    """Progress reporting must never be what kills a training run; SystemExit (preemption) passes."""
    def wrapper(arg):
        try:
            fn(arg)
        except Exception as exc:  # noqa: BLE001 - logged once per callback, training goes on
            if fn.__name__ not in rep.failed_callbacks:
                rep.failed_callbacks.add(fn.__name__)
                print(f"yolo-supervisor: progress callback {fn.__name__} failed: {exc!r}", file=sys.stderr)
    wrapper.__name__ = fn.__name__
    return wrapper


def _losses(tloss) -> dict[str, float] | None:
    """Running mean losses; Ultralytics keeps them as a dict (8.4) or a tensor (older)."""
    if tloss is None:
        return None
    if isinstance(tloss, dict):
        return {k: round(float(v), 5) for k, v in tloss.items()}
    return {str(i): round(float(v), 5) for i, v in enumerate(tloss.reshape(-1))}


def _save_resumable_and_exit(trainer, rep: Reporter) -> None:
    """Save a checkpoint whose epoch is the last *completed* one, so resume redoes this epoch."""
    rep.beat(force=True, phase="saving_for_preemption")
    trainer.epoch -= 1
    try:
        if trainer.epoch >= 0:  # nothing completed yet in epoch 1: nothing worth saving
            trainer.save_model()
            rep.state["saved_epochs_done"] = trainer.epoch + 1
    except Exception as exc:  # noqa: BLE001 - raised out of the callback, _never_raises would swallow it
        _exit_save_failed(rep, exc)
    finally:
        trainer.epoch += 1
    _exit_preempted(rep, "mid-epoch save")


def _exit_save_failed(rep: Reporter, exc: BaseException) -> None:
    """SIGTERM asked for a save and it failed: end the attempt (exit 1) saying so, never train on."""
    rep.beat(force=True, phase="preempted")
    rep.exit_record(1, exception=type(exc).__name__, message=f"save on SIGTERM failed: {exc}"[:2000])
    print(f"yolo-supervisor: SIGTERM received; the save failed ({exc!r}); exiting 1", file=sys.stderr, flush=True)
    os._exit(1)


def _exit_preempted(rep: Reporter, how: str) -> None:
    rep.beat(force=True, phase="preempted")
    rep.exit_record(PREEMPTED_EXIT_CODE, preempted=how)
    sys.stdout.flush()
    sys.stderr.flush()
    print(f"yolo-supervisor: SIGTERM received; resumable checkpoint saved ({how}); exiting "
          f"{PREEMPTED_EXIT_CODE}", file=sys.stderr, flush=True)
    os._exit(PREEMPTED_EXIT_CODE)


def _install_sigterm(rep: Reporter) -> None:
    def handler(signum, frame):
        if rep.state["first_batch_at"] is None and rep.state["phase"] == "setup":
            # Nothing trained in this attempt yet: nothing to save.
            _exit_preempted(rep, "before training")
        rep.preempt_requested = True  # acted on at the next batch end (or epoch end)

    signal.signal(signal.SIGTERM, handler)


# TEST ONLY: a script to run instead of Ultralytics, for control-plane tests that need a cheap
# long-running job. Never set it on a real daemon.
FAKE_TRAINER_ENV = "YOLO_SUPERVISOR_FAKE_TRAINER"


def _run_fake_trainer(script: str, plan: dict[str, Any], rep: Reporter) -> int:
    """TEST ONLY (see FAKE_TRAINER_ENV): ``script`` runs with ``plan`` and ``reporter`` as globals."""
    import runpy

    runpy.run_path(script, init_globals={"plan": plan, "reporter": rep}, run_name="__main__")
    rep.exit_record(0)
    return 0


def _midepoch_controller(plan: dict[str, Any], rep: Reporter) -> tuple[Optional[MidEpoch], Optional[dict]]:
    """The mid-epoch controller for this attempt (None: epoch-level only) and the record resumed from."""
    resume = plan.get("resume")
    record = inspect_checkpoint(resume).midepoch if resume else None
    problem = support_problem(str(plan["train"].get("device", "cpu")))
    rep.state["midepoch"] = {"supported": problem is None, "why": problem}
    if problem is not None:
        rep.note(problem)
        return None, record
    interval = float(plan.get("checkpoint_every_s") or 0)

    def saved(record: dict, seconds: float) -> None:
        rep.beat(force=True, last_midepoch={"epoch": record["epoch"] + 1, "next_batch": record["next_batch"],
                                            "batches": record["batches"], "at": time.time(),
                                            "seconds": round(seconds, 3), "size": record["size"]})

    return MidEpoch(interval, record, on_saved=saved, note=rep.note), record


def _set_checkpoint_epochs(path: Path, epochs: int, rep: Reporter) -> None:
    """``extend``: Ultralytics takes ``epochs`` from the checkpoint on resume and ignores an override,
    so the checkpoint itself is rewritten (atomically) to the new total. The LR schedule is then
    re-derived for that total when the trainer starts."""
    import io

    import torch

    from supervisor.child.midepoch import atomic_write_bytes

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    old = ckpt["train_args"].get("epochs")
    if old == epochs:
        return
    ckpt["train_args"]["epochs"] = epochs
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    rep.note(f"extended: {path.name} now trains to {epochs} epochs (was {old}); the learning-rate "
             "schedule is rebuilt for the new total")


def _process_start_time() -> float:
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - only a benchmark figure depends on it
        return time.time()


def run(plan: dict[str, Any]) -> int:
    rep = Reporter(plan)
    _install_sigterm(rep)
    rep.beat(force=True)
    if os.environ.get(FAKE_TRAINER_ENV):
        return _run_fake_trainer(os.environ[FAKE_TRAINER_ENV], plan, rep)
    try:
        rep.mark("child_started")
        from ultralytics import YOLO

        rep.mark("ultralytics_imported")
        mid, record = _midepoch_controller(plan, rep)
        resume = plan.get("resume")
        if resume and plan.get("extend_epochs"):
            _set_checkpoint_epochs(Path(resume), int(plan["extend_epochs"]), rep)
        if resume and record is not None and mid is None and int(record["epoch"]) == 0:
            # An unsupported version cannot resume inside the first epoch: start it again, honestly.
            rep.note("the mid-epoch state is inside epoch 1: starting the training again from scratch")
            resume = None
        if resume:
            model = YOLO(resume)
            _install_callbacks(model, rep, mid)
            model.train(resume=resume, **plan.get("overrides", {}))
        else:
            model = YOLO(plan["train"]["model"])
            _install_callbacks(model, rep, mid)
            model.train(**{k: v for k, v in plan["train"].items() if k != "model"})
    except BaseException as exc:  # record every way out, then let Python print the traceback
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
        rep.exit_record(code, exception=type(exc).__name__, message=str(exc)[:2000],
                        traceback=traceback.format_exc()[-4000:])
        raise
    rep.exit_record(0)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plan = json.loads(Path(argv[0]).read_text())
    return run(plan)


if __name__ == "__main__":
    sys.exit(main())
