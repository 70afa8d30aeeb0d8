"""A live attempt: watched every tick (progress, stalls, snapshots) and ended on request (TERM, grace, KILL).

Once a launch is recorded (or a daemon restart re-adopts an attempt), ``watch`` registers it: the
reactor reports its exit, and housekeeping reads its progress file, keeps verified copies of its
checkpoints (on a worker) and kills it when it stalls. ``terminate`` is the one way the daemon ends
an attempt itself (a user's stop or restart, a stall): the intent is persisted first, the TERM and
the KILL after the grace go to workers (a /proc scan each), and the exit comes back as the pidfd.
"""

from __future__ import annotations

import functools
import signal
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from supervisor import safefs
from supervisor.contract import Progress
from supervisor.daemon import jobwork, specs
from supervisor.daemon import trackers as tracker_runs
from supervisor.daemon.running import Running
from supervisor.daemon.workers import STEP_RETRY_S, Outcome
from supervisor.jobs.machine import On
from supervisor.jobs.spec import JobSpec, SpecError
from supervisor.jobs.states import Cause, JobState
from supervisor.probes.progress import stall_verdict

if TYPE_CHECKING:
    from supervisor.daemon.reactor import Reactor
    from supervisor.daemon.workers import Workers
    from supervisor.probes.progress import ProgressFiles
    from supervisor.store import JobRecord

S = JobState
NOTES_PER_ATTEMPT = 5  # the child's notes recorded as events per attempt; the rest are counted in one
NOTE_CHARS = 500  # of one note


class AttemptsHost(tracker_runs.TrackerHost, Protocol):
    """What watching and stopping use of the daemon: named here so this module needs nothing from core.py."""

    reactor: "Reactor"
    workers: "Workers"
    progress_files: "ProgressFiles"
    executor: Any
    running: dict[str, Running]
    ending: dict[str, Running]

    def transition(self, name: str, on: On, reason: str, actor: Optional[str] = None, *,
                   grace: float = 0.0, **fields: Any) -> None: ...
    def guarded(self, fn: Callable[[str], None], name: str) -> None: ...
    def job_work(self, job: "JobRecord", spec: Optional[JobSpec]) -> jobwork.JobWork: ...
    def as_owner(self, name: str) -> Any: ...
    def end_attempt(self, name: str) -> None: ...


class Attempts:
    """The daemon's eyes on its live attempts, and its hand that ends them."""

    def __init__(self, host: AttemptsHost):
        self.host = host
        self.snapshot_retry_at: dict[str, float] = {}  # job -> monotonic time before which no snapshot is tried

    def watch(self, name: str, run: Running) -> None:
        """From now on the loop hears of the attempt's exit and housekeeping watches its progress."""
        run.progress_path = str(self.host.home.job_progress(name))
        self.host.running[name] = run
        self.host.reactor.watch(run.child.pidfd, name)

    def watch_all(self) -> None:
        for name in list(self.host.running):
            self.host.guarded(self.watch_running, name)

    # -- watching a running attempt ---------------------------------------------
    def watch_running(self, name: str) -> None:
        # Runs every tick for every running job: one stat of the progress file and one job row
        # read when nothing happened (the idle-CPU budget at 32 jobs is 1 % of a core).
        host = self.host
        run = host.running[name]
        progress, key = host.progress_files.read(run.progress_path)
        if progress and key != run.progress_key:
            run.progress_key = key
            self.note_progress(name, run, progress)
        job = host.store.get_job(name)
        self.snapshot(name, job)
        if run.kill_at is not None and time.monotonic() >= run.kill_at:
            self._escalate_kill(name, run)
        elif run.kill_cause is None:
            try:
                spec = specs.parsed(job.spec_yaml, name)
            except SpecError:
                return  # the attempt runs on; its end fails the job with the reason
            self._check_stall(name, run, progress, spec)

    def _check_stall(self, name: str, run: Running, progress: Optional[Progress], spec: JobSpec) -> None:
        """A hung attempt (NCCL deadlock, frozen process) is killed and restarted as ``stalled``."""
        health = spec.health
        verdict = stall_verdict(progress, time.time(), run.child.start_time, health.stall_timeout,
                                health.stall_floor, health.first_batch_timeout)
        if verdict.stalled:
            run.extra["stall_reason"] = verdict.reason
            self.terminate(name, On.STALLED, Cause.STALLED, f"stalled: {verdict.reason}", health.stop_grace)

    def note_progress(self, name: str, run: Running, progress: Progress) -> None:
        """What the child reported: its notes, its tracker runs, its run directory, its first batch."""
        host = self.host
        self.note_child_lines(name, run, progress)
        tracker_runs.take_reported(host, name, None, progress)
        job = host.store.get_job(name)
        if progress.save_dir and progress.save_dir != job.run_dir:
            self._take_run_dir(job, run, progress.save_dir)
        if progress.first_batch_at and not run.first_batch_seen:
            run.first_batch_seen = True
            host.store.mark_first_batch(run.attempt_id, progress.first_batch_at)
            if job.state == S.STARTING.value:
                host.transition(name, On.FIRST_BATCH, f"attempt {run.attempt_no}: first batch trained")

    def _take_run_dir(self, job: "JobRecord", run: Running, save_dir: Any) -> None:
        """The child (the job's user) reports where it trains; only a folder inside the job's own
        runs folder (or the spec's ``project``) is believed, never one elsewhere on the host."""
        host = self.host
        try:
            project = specs.spec_of(job).train.get("project") or host.home.job_runs(job.name)
        except SpecError:
            project = host.home.job_runs(job.name)
        inside = None
        if isinstance(save_dir, str):
            with host.as_owner(job.name):
                inside = safefs.resolve_inside(save_dir, str(project))
        if inside is None:
            if run.extra.get("refused_save_dir") != save_dir:  # once per value, not every progress write
                run.extra["refused_save_dir"] = save_dir
                host.event(job.name, "refused", f"run directory {str(save_dir)[:200]!r} reported by the "
                           f"child is outside {project}; ignored")
            return
        if str(inside) != job.run_dir:
            host.store.update_job(job.name, run_dir=str(inside))

    def note_child_lines(self, name: str, run: Running, progress: Progress) -> None:
        """The child's one-line notes (an epoch-level fallback, an inexact resume) go to the history once,
        at most ``NOTES_PER_ATTEMPT`` of them: the child's user writes the file, and a flood of notes
        must not become a flood of events. The rest are counted, in one event when the attempt ends."""
        host = self.host
        notes = [line for line in progress.notes if isinstance(line, str)]
        fresh = notes[run.extra.get("notes_seen", 0):]
        recorded = run.extra.get("notes_recorded", 0)
        kept = fresh[:max(0, NOTES_PER_ATTEMPT - recorded)]
        for line in kept:
            host.event(name, "checkpoint", f"attempt {run.attempt_no}: {line[:NOTE_CHARS]}")
        run.extra["notes_recorded"] = recorded + len(kept)
        run.extra["notes_dropped"] = run.extra.get("notes_dropped", 0) + len(fresh) - len(kept)
        run.extra["notes_seen"] = len(notes)
        dropped = run.extra["notes_dropped"]
        if name in host.ending and dropped and not run.extra.get("notes_dropped_told"):
            host.event(name, "checkpoint", f"attempt {run.attempt_no}: {dropped} more note(s) from the child "
                       f"not recorded (at most {NOTES_PER_ATTEMPT} an attempt)", dropped=dropped)
            run.extra["notes_dropped_told"] = True

    # -- snapshots ----------------------------------------------------------------
    def snapshot(self, name: str, job: Optional["JobRecord"] = None) -> None:
        """Copy a newly saved last.pt or mid-epoch state into the vault once it verifies (on a
        worker: a copy and CRC check of hundreds of MB); one snapshot of a job at a time."""
        host = self.host
        job = job or host.store.get_job(name)
        if not job.run_dir or self.snapshot_retry_at.get(name, 0) > time.monotonic():
            return
        try:
            spec = specs.spec_of(job)
        except SpecError:
            return  # keep_checkpoints unknown: the attempt's end fails the job with the reason
        task = functools.partial(jobwork.snapshots, host.job_work(job, spec))
        host.workers.submit(("job", name), task, jobwork.SNAPSHOT_DEADLINE_S,
                            functools.partial(self._snapshots_taken, name))

    def _snapshots_taken(self, name: str, outcome: Outcome) -> None:
        host = self.host
        if not outcome.ok:  # a full disk: the run goes on; the copy is tried again later
            self.snapshot_retry_at[name] = time.monotonic() + STEP_RETRY_S
            host.log.error("could not keep a verified copy of a checkpoint", job=name,
                           error=outcome.problem(jobwork.SNAPSHOT_DEADLINE_S), retry_in_s=STEP_RETRY_S)
        else:
            self.note_snapshots(name, outcome.value)
        if name in host.ending:  # the attempt ended while its snapshot ran: gather its end now
            host.guarded(host.end_attempt, name)

    def note_snapshots(self, name: str, kept: list) -> None:
        """The copies a worker kept go to the history, and the epochs they hold to the job."""
        store = self.host.store
        job = store.get_job(name)
        for info in kept:
            if job is None:
                return
            if info.epochs_done > (job.epochs_done or 0):
                store.update_job(name, epochs_done=info.epochs_done)
                job = store.get_job(name)
            self.host.event(name, "snapshot", f"verified copy of {info.where()} kept", epoch=info.epochs_done,
                            batch=info.position[1] or None)

    # -- stopping -------------------------------------------------------------
    def terminate(self, name: str, on: On, cause: Cause, reason: str, grace: float, actor: Optional[str] = None,
                  user_stop: bool = False, then: Optional[str] = None) -> None:
        """TERM every process of the job now (the table's action on ``on``); KILL what is left after
        ``grace`` seconds."""
        run = self.host.running[name]
        run.kill_cause, run.user_stop, run.then = cause, user_stop, then
        run.kill_at = time.monotonic() + grace
        self.note_stop_intent(run)  # before the TERM: a daemon restart right after must not forget it
        self.host.transition(name, on, reason, actor, grace=grace)

    def send_term(self, name: str, run: Running, grace: float, actor: Optional[str] = None) -> None:
        """SIGTERM to every process of the job, on a worker (a /proc scan)."""
        host = self.host
        task = functools.partial(host.executor.signal_job, name, run.child, signal.SIGTERM)

        def sent(outcome: Outcome) -> None:
            pids = outcome.value if outcome.ok else []
            host.event(name, "signal", f"SIGTERM to {len(pids)} process(es); SIGKILL after {grace:g}s",
                       actor, pids=pids)
        if not host.workers.submit(("signal", name, run.attempt_id), task, jobwork.KILL_DEADLINE_S, sent):
            run.kill_at = time.monotonic()  # the last TERM still under way: the KILL comes at once

    def note_stop_intent(self, run: Running) -> None:
        """Persist why and by when the attempt is being ended; ``reconcile`` restores it."""
        left = None if run.kill_at is None else max(0.0, run.kill_at - time.monotonic())
        self.host.store.set_stop_intent(run.attempt_id, cause=run.kill_cause.value if run.kill_cause else None,
                                        detail=run.extra.get("stall_reason"), by_user=run.user_stop, then=run.then,
                                        kill_at=None if left is None else time.time() + left)

    def _escalate_kill(self, name: str, run: Running) -> None:
        """SIGKILL and the wait for it to land run on a worker; the exit comes back as the pidfd."""
        host = self.host
        task = functools.partial(host.executor.kill_job_now, name, run.child)

        def killed(outcome: Outcome) -> None:
            survivors = outcome.value if outcome.ok else outcome.problem(jobwork.KILL_DEADLINE_S)
            host.event(name, "signal", "grace period over: SIGKILL to every process of the job",
                       survivors=survivors)
        if host.workers.submit(("kill", name, run.attempt_id), task, jobwork.KILL_DEADLINE_S, killed):
            run.kill_at = None
