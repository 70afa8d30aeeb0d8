"""Entry point of one training attempt: ``python -m supervisor.child.train PLAN.json``.

Runs Ultralytics in this process and adds what the daemon needs from inside:
- a progress file (phase, epoch, batch i/n, losses, heartbeat gaps), throttled;
- SIGTERM handling: save a *resumable* checkpoint at the next batch end and exit
  with PREEMPTED_EXIT_CODE (Ultralytics itself saves nothing on SIGTERM, and
  ``trainer.stop`` would strip last.pt, so it is never used);
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
from typing import Any

from supervisor.child.progress import write_json_atomic
from supervisor.jobs.states import PREEMPTED_EXIT_CODE

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
            "save_dir": None, "batch_size": None,
        }
        self._last_write = 0.0
        self._epoch_start = None
        self.preempt_requested = False

    def beat(self, force: bool = False, **values: Any) -> None:
        now = time.time()
        gap = now - self.state["last_beat_at"]
        if self.state["phase"] in ("training", "validating"):
            self.state["max_gap_s"] = max(self.state["max_gap_s"], gap)
        self.state.update(values, last_beat_at=now, updated_at=now)
        if force or now - self._last_write >= PROGRESS_INTERVAL_S:
            write_json_atomic(self.path, self.state)
            self._last_write = now

    def exit_record(self, code: int, **extra: Any) -> None:
        record = {"exit_code": code, "at": time.time(), "reached_training": self.state["first_batch_at"] is not None,
                  "phase": self.state["phase"], **extra}
        write_json_atomic(self.exit_path, record)


def _install_callbacks(model, rep: Reporter) -> None:
    def on_pretrain_routine_start(trainer):
        rep.beat(force=True, save_dir=str(trainer.save_dir), batch_size=int(trainer.args.batch))

    def on_train_epoch_start(trainer):
        rep._epoch_start = time.time()
        rep.beat(force=True, phase="training", epoch=trainer.epoch + 1, epochs=trainer.epochs, batch=0,
                 save_dir=str(trainer.save_dir))

    def on_train_batch_end(trainer):
        if rep.state["first_batch_at"] is None:
            rep.state["first_batch_at"] = time.time()
            rep.beat(force=True)
        if rep.preempt_requested:
            _save_resumable_and_exit(trainer, rep)
        i = rep.state["batch"] + 1 if rep.state["batch"] is not None else 1
        losses = [round(float(x), 5) for x in trainer.tloss] if getattr(trainer, "tloss", None) is not None else None
        rep.beat(batch=i, batches=len(trainer.train_loader), losses=losses)

    def on_train_epoch_end(trainer):
        rep.beat(force=True, phase="validating")

    def on_val_batch_end(validator):
        rep.beat()

    def on_model_save(trainer):
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
            model.add_callback(event, fn)


def _save_resumable_and_exit(trainer, rep: Reporter) -> None:
    """Save a checkpoint whose epoch is the last *completed* one, so resume redoes this epoch."""
    rep.beat(force=True, phase="saving_for_preemption")
    trainer.epoch -= 1
    try:
        if trainer.epoch >= 0:  # nothing completed yet in epoch 1: nothing worth saving
            trainer.save_model()
            rep.state["saved_epochs_done"] = trainer.epoch + 1
    finally:
        trainer.epoch += 1
    _exit_preempted(rep, "mid-epoch save")


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


def run(plan: dict[str, Any]) -> int:
    rep = Reporter(plan)
    _install_sigterm(rep)
    rep.beat(force=True)
    try:
        from ultralytics import YOLO

        resume = plan.get("resume")
        if resume:
            model = YOLO(resume)
            _install_callbacks(model, rep)
            model.train(resume=resume, **plan.get("overrides", {}))
        else:
            model = YOLO(plan["train"]["model"])
            _install_callbacks(model, rep)
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
