"""Entry point of one training attempt: ``python -m supervisor.child.train PLAN.json``.

Runs Ultralytics in this process and adds what the daemon needs from inside, through its callbacks
(this module); each role is a module of its own:
- a progress file (phase, epoch, batch i/n, losses, heartbeat gaps), throttled (child/reporter.py);
- mid-epoch checkpoints every ``checkpoint_every`` seconds and exact mid-epoch resume
  (supervisor/child/midepoch.py), behind a version check with an epoch-level fallback;
- SIGTERM handling: save a mid-epoch checkpoint at the next batch end (after the next
  optimizer step) and exit with PREEMPTED_EXIT_CODE (Ultralytics itself saves nothing
  on SIGTERM, and ``trainer.stop`` would strip last.pt, so it is never used) (child/stop.py);
- ``extend``: the checkpoint resumed from is rewritten to the new total of epochs (child/extend.py);
- an exit record (exit code, exception, whether training was reached) so a
  re-adopted attempt's end can still be classified;
- multi-GPU (DDP): our callbacks run in every rank; rank 0 reports, all ranks stop at the same batch
  on SIGTERM, rank 0 saves once, and this process waits for them (supervisor/child/ddp.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

from supervisor.child import ddp, trackers
from supervisor.child.extend import set_checkpoint_epochs
from supervisor.child.fake_hook import FAKE_TRAINER_ENV, run_fake_trainer
from supervisor.child.finite import record_finiteness
from supervisor.child.midepoch import MidEpoch, support_problem
from supervisor.child.reporter import Reporter
from supervisor.child.stop import (ddp_launch_failed, exit_preempted, exit_save_failed, install_sigterm,
                                   ranks_agree_to_stop, save_resumable_and_exit, stop_ranks_and_exit)
from supervisor.contract import Plan, from_json
from supervisor.probes.checkpoint import inspect_checkpoint

def _install_callbacks(model, rep: Reporter, mid_epoch: Optional[MidEpoch]) -> None:
    def single(m: Optional[MidEpoch]) -> Optional[MidEpoch]:
        # A DDP rank never runs the mid-epoch machinery (single-process only: every rank would have to
        # rebuild its sampler alike), whatever the plan's device string made support_problem think.
        return m if rep.rank is None else None

    def on_pretrain_routine_start(trainer):
        rep.mark("trainer_created")
        record_finiteness(trainer)  # before the mid-epoch machinery, whose saves go through save_model too
        mid = single(mid_epoch)
        if mid is not None:
            mid.install(trainer)
        rep.beat(force=True, save_dir=str(trainer.save_dir), batch_size=int(trainer.args.batch))

    def on_pretrain_routine_end(trainer):
        rep.mark("setup_done")  # model, dataset and label cache, dataloaders, optimizer, resume

    def on_train_epoch_start(trainer):
        rep.mark("first_epoch_start")
        rep._epoch_start = time.time()
        mid = single(mid_epoch)
        first = mid.enumerate_start(trainer.train_loader) if mid is not None else 0
        if rep.state["resumed_at"] is None:
            rep.state["resumed_at"] = {"epoch": trainer.epoch + 1, "batch": first}
        rep.beat(force=True, phase="training", epoch=trainer.epoch + 1, epochs=trainer.epochs, batch=first,
                 save_dir=str(trainer.save_dir), epoch_started_at=rep._epoch_start)

    def on_train_batch_start(trainer):
        if rep.rank is None:
            rep.drills.on_step_start(trainer)  # `drill oom` raises from here, as a real step would
        mid = single(mid_epoch)
        if mid is not None:
            mid.on_batch_start(trainer)

    def on_train_batch_end(trainer):
        try:
            report_batch(trainer)
        finally:
            # Even when reporting failed: every rank must take part in every agreement, or the later
            # ones pair up wrongly and the last one waits forever.
            if rep.rank is not None and ranks_agree_to_stop(trainer, rep):
                stop_ranks_and_exit(trainer, rep, save=True)
        if rep.rank is None:
            stop_single_process_if_asked(trainer)

    def report_batch(trainer):
        first_of_attempt = rep.state["first_batch_at"] is None
        if first_of_attempt:
            rep.state["first_batch_at"] = time.time()
            rep.mark("first_batch")
        i = (rep.state["batch"] or 0) + 1
        losses = _losses(getattr(trainer, "tloss", None))
        # The first batch of each epoch is always written: it marks the epoch as under way.
        rep.beat(force=first_of_attempt or i == 1, batch=i, batches=len(trainer.train_loader), losses=losses)

    def stop_single_process_if_asked(trainer):
        mid = mid_epoch
        if mid is None:
            if rep.preempt_requested:
                save_resumable_and_exit(trainer, rep)
            return
        if mid.due(rep.preempt_requested):
            # On SIGTERM the last batch saves too (the whole pass trained): validation is not waited for.
            saved = _save_midepoch(trainer, rep, mid, whole_pass=rep.preempt_requested)
            if saved and rep.preempt_requested:
                exit_preempted(rep, f"mid-epoch save at epoch {saved['epoch'] + 1} batch {saved['next_batch']}")

    def on_train_epoch_end(trainer):
        mid = single(mid_epoch)
        if mid is not None:
            mid.on_epoch_end(trainer)
        rep.beat(force=True, phase="validating")

    def on_val_batch_end(validator):
        rep.beat()
        mid = single(mid_epoch)
        if rep.rank is None and rep.preempt_requested and mid is not None and mid.trainer is not None:
            # Validation can take minutes: save the trained epoch now; the resume validates it.
            saved = _save_midepoch(mid.trainer, rep, mid, whole_pass=True)
            if saved:
                exit_preempted(rep, f"epoch {saved['epoch'] + 1} trained, saved during its validation")

    def on_model_save(trainer):
        mid = single(mid_epoch)
        if mid is not None:
            mid.epoch_saved()
        if rep.rank is None:
            rep.drills.after_save(trainer)
        rep.beat(force=True, saved_epochs_done=trainer.epoch + 1, last_save_at=time.time())

    def on_fit_epoch_end(trainer):
        try:
            if rep._epoch_start is not None:
                rep.state["epoch_times"] = (rep.state["epoch_times"]
                                            + [round(time.time() - rep._epoch_start, 3)])[-50:]
            rep.beat(force=True, phase="epoch_end")
        finally:
            if rep.rank is not None and ranks_agree_to_stop(trainer, rep):
                stop_ranks_and_exit(trainer, rep, save=False)  # rank 0 saved this epoch moments ago
        if rep.rank is None and rep.preempt_requested:
            # The checkpoint just saved holds this whole epoch: leave now.
            exit_preempted(rep, "after epoch save")

    def on_train_end(trainer):
        rep.beat(force=True, phase="finished")

    for event, fn in dict(locals()).items():
        if event.startswith("on_"):
            # Saving is the point of a preemption: a failure there must end the attempt, not be swallowed.
            wrap = _raises_loudly if event in ("on_pretrain_routine_start", "on_train_batch_start") else _never_raises
            model.add_callback(event, wrap(fn, rep))
    trackers.install(model, rep)  # the job's one run in each experiment tracker (after ours)


def _save_midepoch(trainer, rep: Reporter, mid: MidEpoch, whole_pass: bool = False) -> Optional[dict]:
    """Write the mid-epoch checkpoint; a failed save is reported, and on SIGTERM ends the attempt."""
    try:
        return mid.save(trainer, whole_pass)
    except Exception as exc:  # noqa: BLE001 - a full disk must not end a training that can go on
        rep.note(f"mid-epoch save failed: {exc!r}")
        if rep.preempt_requested:
            exit_save_failed(rep, exc)
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


def _midepoch_controller(plan: Plan, rep: Reporter) -> tuple[Optional[MidEpoch], Optional[dict]]:
    """The mid-epoch controller for this attempt (None: epoch-level only) and the record resumed from."""
    resume = plan.resume
    record = inspect_checkpoint(resume).midepoch if resume else None
    problem = support_problem(str(plan.train.get("device", "cpu")))
    rep.state["midepoch"] = {"supported": problem is None, "why": problem}
    if problem is not None:
        rep.note(problem)
        return None, record
    interval = float(plan.checkpoint_every_s or 0)

    def saved(record: dict, seconds: float) -> None:
        rep.beat(force=True, last_midepoch={"epoch": record["epoch"] + 1, "next_batch": record["next_batch"],
                                            "batches": record["batches"], "at": time.time(),
                                            "seconds": round(seconds, 3), "size": record["size"]})

    return MidEpoch(interval, record, on_saved=saved, note=rep.note), record


def _note_ddp_support(plan: Plan, rep: Reporter) -> None:
    if ddp.requested_gpus(plan.train.get("device", "cpu")) > 1:
        problem = ddp.support_problem()
        if problem is not None:
            rep.note(problem)


def run(plan: Plan) -> int:
    rep = Reporter(plan)
    ddp.clear_stop_request(rep.stop_path)
    install_sigterm(rep)
    rep.beat(force=True)
    if os.environ.get(FAKE_TRAINER_ENV):
        return run_fake_trainer(os.environ[FAKE_TRAINER_ENV], plan, rep)
    try:
        rep.mark("child_started")
        trackers.prepare(plan.trackers)  # the job's tracker run ids and Ultralytics settings, before YOLO starts
        from ultralytics import YOLO

        rep.mark("ultralytics_imported")
        _note_ddp_support(plan, rep)
        mid, record = _midepoch_controller(plan, rep)
        resume = plan.resume
        if resume and plan.extend_epochs:
            set_checkpoint_epochs(Path(resume), int(plan.extend_epochs), rep)
        if resume and record is not None and mid is None and int(record["epoch"]) == 0:
            # An unsupported version cannot resume inside the first epoch: start it again, honestly.
            rep.note("the mid-epoch state is inside epoch 1: starting the training again from scratch")
            resume = None
        if resume:
            model = YOLO(resume)
            _install_callbacks(model, rep, mid)
            model.train(resume=resume, **plan.overrides)
        else:
            model = YOLO(plan.train["model"])
            _install_callbacks(model, rep, mid)
            model.train(**{k: v for k, v in plan.train.items() if k != "model"})
    except BaseException as exc:  # record every way out, then let Python print the traceback
        ranks_code = ddp_launch_failed(rep, exc)
        if ranks_code is not None:
            print(f"yolo-supervisor: the DDP ranks ended; exiting {ranks_code} as rank 0 recorded",
                  file=sys.stderr, flush=True)
            return ranks_code
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
        rep.exit_record(code, exception=type(exc).__name__, message=str(exc)[:2000],
                        traceback=traceback.format_exc()[-4000:])
        raise
    rep.exit_record(0)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plan = from_json(Plan, json.loads(Path(argv[0]).read_text()))
    if plan is None:  # the daemon writes it from the contract: anything else is not ours
        raise SystemExit(f"{argv[0]}: not an attempt plan (see supervisor/contract.py: Plan)")
    return run(plan)


if __name__ == "__main__":
    sys.exit(main())
