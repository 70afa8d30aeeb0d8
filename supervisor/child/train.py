"""Entry point of one training attempt: ``python -m supervisor.child.train PLAN.json``.

Runs Ultralytics in this process and adds what the daemon needs from inside:
- a progress file (phase, epoch, batch i/n, losses, heartbeat gaps), throttled;
- mid-epoch checkpoints every ``checkpoint_every`` seconds and exact mid-epoch resume
  (supervisor/child/midepoch.py), behind a version check with an epoch-level fallback;
- SIGTERM handling: save a mid-epoch checkpoint at the next batch end (after the next
  optimizer step) and exit with PREEMPTED_EXIT_CODE (Ultralytics itself saves nothing
  on SIGTERM, and ``trainer.stop`` would strip last.pt, so it is never used);
- an exit record (exit code, exception, whether training was reached) so a
  re-adopted attempt's end can still be classified;
- multi-GPU (DDP): our callbacks run in every rank; rank 0 reports, all ranks stop at the same batch
  on SIGTERM, rank 0 saves once, and this process waits for them (supervisor/child/ddp.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from supervisor.child import ddp, trackers
from supervisor.child.drill import Drills, request_path
from supervisor.child.finite import record_finiteness
from supervisor.child.midepoch import MidEpoch, support_problem
from supervisor.contract import ExitRecord, Plan, Progress, from_json, read_json, to_json, write_json_atomic
from supervisor.jobs.states import PREEMPTED_EXIT_CODE
from supervisor.process.torchrun import is_torch_launcher
from supervisor.probes.checkpoint import inspect_checkpoint

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
            _install_sigterm(self)

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
            if rep.rank is not None and _ranks_agree_to_stop(trainer, rep):
                _stop_ranks_and_exit(trainer, rep, save=True)
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
                _save_resumable_and_exit(trainer, rep)
            return
        if mid.due(rep.preempt_requested):
            # On SIGTERM the last batch saves too (the whole pass trained): validation is not waited for.
            saved = _save_midepoch(trainer, rep, mid, whole_pass=rep.preempt_requested)
            if saved and rep.preempt_requested:
                _exit_preempted(rep, f"mid-epoch save at epoch {saved['epoch'] + 1} batch {saved['next_batch']}")

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
                _exit_preempted(rep, f"epoch {saved['epoch'] + 1} trained, saved during its validation")

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
            if rep.rank is not None and _ranks_agree_to_stop(trainer, rep):
                _stop_ranks_and_exit(trainer, rep, save=False)  # rank 0 saved this epoch moments ago
        if rep.rank is None and rep.preempt_requested:
            # The checkpoint just saved holds this whole epoch: leave now.
            _exit_preempted(rep, "after epoch save")

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


def _save_resumable(trainer, rep: Reporter) -> None:
    """Save a checkpoint whose epoch is the last *completed* one, so resume redoes this epoch."""
    rep.beat(force=True, phase="saving_for_preemption")
    trainer.epoch -= 1
    try:
        if trainer.epoch >= 0:  # nothing completed yet in epoch 1: nothing worth saving
            trainer.save_model()
            rep.state["saved_epochs_done"] = trainer.epoch + 1
    finally:
        trainer.epoch += 1


def _save_resumable_and_exit(trainer, rep: Reporter) -> None:
    try:
        _save_resumable(trainer, rep)
    except Exception as exc:  # noqa: BLE001 - raised out of the callback, _never_raises would swallow it
        _exit_save_failed(rep, exc)
    _exit_preempted(rep, "mid-epoch save")


def _ranks_agree_to_stop(trainer, rep: Reporter) -> bool:
    """Every DDP rank calls this at the same point; True on all of them when any was asked to stop
    (its own SIGTERM, or the launcher parent's stop request for a TERM that missed the ranks)."""
    local = rep.preempt_requested or ddp.stop_requested(rep.stop_path)
    rep.preempt_requested = ddp.agree(local, trainer.device)
    return rep.preempt_requested


def _stop_ranks_and_exit(trainer, rep: Reporter, save: bool) -> None:
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


def _save_and_record_for_all_ranks(trainer, rep: Reporter, save: bool, where: str) -> int:
    """Rank 0's part: the epoch-level save (as a single process without mid-epoch support does) and
    the exit record the launcher parent will end with."""
    try:
        if save:
            _save_resumable(trainer, rep)
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
    print(f"{rep.tag}: SIGTERM received; resumable checkpoint saved ({how}); exiting "
          f"{PREEMPTED_EXIT_CODE}", file=sys.stderr, flush=True)
    os._exit(PREEMPTED_EXIT_CODE)


def _install_sigterm(rep: Reporter) -> None:
    def handler(signum, frame):
        if rep.rank is None and _ddp_launched(rep):
            # The launcher parent: the ranks save and stop, torchrun exits after them and Ultralytics'
            # subprocess.run returns here. Exiting now would get the ranks SIGKILLed mid-save as leftovers.
            rep.preempt_requested = True
            ddp.request_stop(rep.stop_path)
            return
        if rep.state["first_batch_at"] is None and rep.state["phase"] == "setup":
            # Nothing trained in this attempt yet: nothing to save.
            _exit_preempted(rep, "before training")
        rep.preempt_requested = True  # acted on at the next batch end (or epoch end)

    signal.signal(signal.SIGTERM, handler)


def _ddp_launched(rep: Reporter) -> bool:
    """Whether Ultralytics launched DDP ranks from this process: torchrun runs, or it has run (rank 0
    reported). Decided from what runs, not from the device string, which Ultralytics interprets."""
    return ddp.launcher_running() or bool((read_json(rep.path) or {}).get("ddp"))


def _ddp_launch_failed(rep: Reporter, exc: BaseException) -> Optional[int]:
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
        _exit_preempted(rep, "before training (DDP ranks stopped during setup)")
    return None


# TEST ONLY: a script to run instead of Ultralytics, for control-plane tests that need a cheap
# long-running job. Never set it on a real daemon.
FAKE_TRAINER_ENV = "YOLO_SUPERVISOR_FAKE_TRAINER"


def _run_fake_trainer(script: str, plan: Plan, rep: Reporter) -> int:
    """TEST ONLY (see FAKE_TRAINER_ENV): ``script`` runs with ``plan`` (as JSON) and ``reporter`` as globals."""
    import runpy

    runpy.run_path(script, init_globals={"plan": to_json(plan), "reporter": rep}, run_name="__main__")
    rep.exit_record(0)
    return 0


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


def run(plan: Plan) -> int:
    rep = Reporter(plan)
    ddp.clear_stop_request(rep.stop_path)
    _install_sigterm(rep)
    rep.beat(force=True)
    if os.environ.get(FAKE_TRAINER_ENV):
        return _run_fake_trainer(os.environ[FAKE_TRAINER_ENV], plan, rep)
    try:
        rep.mark("child_started")
        trackers.prepare(plan.trackers)  # the job's tracker run ids and Ultralytics settings, before YOLO starts
        from ultralytics import YOLO

        rep.mark("ultralytics_imported")
        _note_ddp_support(plan, rep)
        mid, record = _midepoch_controller(plan, rep)
        resume = plan.resume
        if resume and plan.extend_epochs:
            _set_checkpoint_epochs(Path(resume), int(plan.extend_epochs), rep)
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
        ranks_code = _ddp_launch_failed(rep, exc)
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
