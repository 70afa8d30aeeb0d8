"""An attempt ended: the facts about it, the policy's decision, and applying that decision.

Held by ``Daemon`` as ``endings``; what it uses of the daemon is ``EndingHost``. The order is
the point: every process of the job is gone first, then the attempt is classified from its exit
status, exit record and log, the furthest verified state is measured (those on a worker:
supervisor/daemon/jobwork.end_facts), ``policy.decide`` decides,
and the attempt's end, its exit event and the job's next state land in one transaction. Each
step is idempotent, so an end that could not be written (a full disk) is simply done again.
"""

from __future__ import annotations

import functools
import signal
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from supervisor.contract import Progress
from supervisor.daemon import gpus as gpu_facts
from supervisor.daemon import jobwork, specs
from supervisor.daemon.running import Running
from supervisor.daemon.workers import STEP_RETRY_S
from supervisor.jobs.spec import JobSpec, SpecError
from supervisor.jobs.machine import On
from supervisor.jobs.states import Cause, JobState
from supervisor.policy import AttemptEnd, Budget, decide, ending_event
from supervisor.process import launcher
from supervisor.process.classify import classify

if TYPE_CHECKING:
    from supervisor.daemon.attempts import Attempts
    from supervisor.daemon.health import DeviceHealth
    from supervisor.daemon.reactor import Reactor
    from supervisor.daemon.scheduling import GpuScheduling
    from supervisor.daemon.workers import Workers
    from supervisor.probes.progress import ProgressFiles
    from supervisor.store import JobRecord, Store

S = JobState


class EndingHost(Protocol):
    """What an attempt's end uses of the daemon: named here so this module needs nothing from core.py."""

    store: "Store"
    reactor: "Reactor"
    workers: "Workers"
    health: "DeviceHealth"
    progress_files: "ProgressFiles"
    executor: Any
    log: Any
    running: dict[str, Running]
    ending: dict[str, Running]   # attempts that exited but whose end is not on disk yet
    retry_at: dict[str, float]

    def transition(self, name: str, on: On, reason: str, actor: Optional[str] = None, *,
                   grace: float = 0.0, **fields: Any) -> None: ...
    def event(self, name: str, kind: str, reason: str, actor: Optional[str] = None, **data: Any) -> None: ...
    def guarded(self, fn: Callable[[str], None], name: str) -> None: ...
    def job_work(self, job: "JobRecord", spec: Optional[JobSpec]) -> jobwork.JobWork: ...
    def fail_unparseable(self, name: str, err: SpecError, on: On, actor: Optional[str] = None,
                         **fields: Any) -> None: ...


class AttemptEnding:
    """From an attempt's exit to the job's next state."""

    def __init__(self, host: EndingHost, attempts: "Attempts", scheduling: "GpuScheduling"):
        self.host = host
        self.attempts = attempts      # its last progress and snapshots are noted as a running one's are
        self.scheduling = scheduling  # the GPUs and the slot it gave back go to the next job at once

    def on_child_exit(self, name: str) -> None:
        host = self.host
        run = host.running.pop(name)
        host.reactor.unwatch(run.child.pidfd)
        # The exit status exists only now: keep it until the attempt's end is on disk.
        run.exit_status, run.ended_at = run.child.exit_status(), time.time()
        run.child.close()
        host.ending[name] = run
        self.end_attempt(name)

    def end_attempt(self, name: str) -> None:
        """Gather the ended attempt's facts on a worker; ``_attempt_ended`` classifies, records and
        decides. Idempotent, so a failed write or a worker without an answer is retried. Until then
        the job keeps its state (``ending`` lists it) and holds its GPUs."""
        host = self.host
        run = host.ending[name]
        job = host.store.get_job(name)
        try:
            spec: Optional[JobSpec] = specs.spec_of(job)
        except SpecError:
            spec = None
        killed = run.exit_status[1] == signal.SIGKILL
        task = functools.partial(jobwork.end_facts, host.job_work(job, spec), host.executor, run.log_offset,
                                 run.child.pid, killed)
        submitted = host.workers.submit(("job", name), task, jobwork.LAUNCH_DEADLINE_S,
                                        functools.partial(self._attempt_ended, name))
        # In flight: not again before its deadline. Not submitted (the job's snapshot still runs):
        # the snapshot's answer starts it, or the next tick does.
        host.retry_at[name] = time.monotonic() + (STEP_RETRY_S if submitted else 0.0)

    def _attempt_ended(self, name: str, outcome) -> None:
        host = self.host
        run = host.ending.get(name)
        if run is None:
            return
        if not outcome.ok:
            host.retry_at[name] = time.monotonic() + STEP_RETRY_S
            host.log.error("the facts of an ended attempt could not be gathered; trying again", job=name,
                           error=outcome.problem(jobwork.LAUNCH_DEADLINE_S), retry_in_s=STEP_RETRY_S)
            return
        run.extra["end_facts"] = outcome.value
        host.guarded(self._record_end, name)

    def _record_end(self, name: str) -> None:
        host = self.host
        run = host.ending[name]
        facts: jobwork.EndFacts = run.extra.pop("end_facts")  # a failed write gathers them again
        exit_code, sig = run.exit_status
        if facts.leftovers:
            host.event(name, "orphans", f"{len(facts.leftovers)} process(es) of the job survived SIGKILL",
                       pids=facts.leftovers)
        reported = host.progress_files.read(run.progress_path)[0]
        progress = reported or Progress()
        self.attempts.note_progress(name, run, progress)
        self.attempts.note_snapshots(name, facts.kept)
        outcome = self._classify(name, run, exit_code, sig, reported, facts)
        self._finish_attempt(name, run, exit_code, sig, outcome, progress, facts)
        del host.ending[name]
        host.retry_at.pop(name, None)
        # A restart without delay is launched now, not at the next housekeeping tick; so are the
        # jobs waiting for the GPUs or the slot the ended attempt gave back.
        self.scheduling.start_due_jobs()

    def _classify(self, name, run: Running, exit_code, sig, progress: Optional[Progress], facts):
        record, tail = facts.record, facts.log_tail
        tail = tail[max(0, tail.rfind(launcher.LOG_BANNER)):]  # this attempt's output only
        reached = bool(progress and progress.first_batch_at) or bool(record and record.reached_training)
        outcome = classify(exit_code, sig, record, tail, reached, facts.oom_killed)
        stopped = run.kill_cause is not None
        outcome = self.host.executor.refine(name, run.child, outcome, record, progress, tail, stopped)
        if run.kill_cause is Cause.STALLED and outcome.cause is not Cause.COMPLETED:
            return type(outcome)(Cause.STALLED, run.extra.get("stall_reason", "no progress"))
        if run.user_stop and outcome.cause not in (Cause.COMPLETED, Cause.PREEMPTED):
            return type(outcome)(Cause.STOPPED, f"stopped by request ({outcome.detail})")
        return outcome

    def _finish_attempt(self, name, run: Running, exit_code, sig, outcome, progress, facts) -> None:
        host = self.host
        job = host.store.get_job(name)
        try:
            spec = specs.spec_of(job)
        except SpecError as err:
            self._end_unparseable(name, run, exit_code, sig, outcome, err)
            return
        best, finished = facts.best, facts.finished
        epochs_after = best.epochs_done if best else None
        images_after = best.trained[1] if best else 0
        if outcome.cause is Cause.DIVERGED:  # `start` resumes from there: name it in the hold
            run.extra["hold_reason"] = (f"the newest is {best.where()} ({best.path.name})" if best else
                                        "none is saved: `start` trains from scratch")
        if finished:  # last.pt is stripped: the epochs it held are the ones last saved
            epochs_after = progress.saved_epochs_done or spec.epochs
        end = AttemptEnd(
            cause=outcome.cause, epochs_before=run.epochs_before, epochs_after=epochs_after,
            images_before=run.images_before, images_after=images_after,
            finished_checkpoint=finished, user_stop=run.user_stop,
            devices_unhealthy=self._devices_unhealthy(name, spec, run),
            batch=job.batch_override or _int(spec.train.get("batch")),
            detail=outcome.detail, on_slurm=getattr(host.executor, "kind", "local") == "slurm",
        )
        budget = Budget(job.crash_restarts, job.no_progress_streak, job.backoff_level,
                        job.setup_failures or 0, job.preempt_streak or 0)
        decision = decide(spec, budget, end)
        # The attempt's end, its exit event and the decision land together: a daemon killed in
        # between must not leave an ended attempt on a job that still says running.
        with host.store.transaction():
            host.store.end_attempt(run.attempt_id, exit_code=exit_code, signal=sig, cause=outcome.cause.value,
                                   detail=outcome.detail, epochs_after=epochs_after, at=run.ended_at)
            host.event(name, "exit", f"attempt {run.attempt_no}: {outcome.cause.value}: {outcome.detail}",
                       exit_code=exit_code, signal=sig, epochs_after=epochs_after)
            self._apply(name, run, decision, outcome.cause, epochs_after)

    def _end_unparseable(self, name: str, run: Running, exit_code, sig, outcome, err: SpecError) -> None:
        """An attempt of a job whose stored spec no longer validates ended: record it, and the job fails."""
        host = self.host
        with host.store.transaction():
            host.store.end_attempt(run.attempt_id, exit_code=exit_code, signal=sig, cause=outcome.cause.value,
                                   detail=outcome.detail, epochs_after=None, at=run.ended_at)
            host.event(name, "exit", f"attempt {run.attempt_no}: {outcome.cause.value}: {outcome.detail}",
                       exit_code=exit_code, signal=sig)
            host.fail_unparseable(name, err, On.ENDED_FAIL, last_cause=outcome.cause.value, pid=None,
                                  pid_start_time=None)

    def _devices_unhealthy(self, name: str, spec: JobSpec, run: Running) -> bool:
        reasons = self.host.health.unhealthy_reasons(gpu_facts.job_gpus(self.host.store.get_job(name), spec))
        if reasons:
            run.extra["hold_reason"] = "; ".join(reasons)
            self.host.event(name, "gpu", run.extra["hold_reason"])
        return bool(reasons)

    def _apply(self, name: str, run: Running, decision, cause: Cause, epochs_after) -> None:
        counters = dict(crash_restarts=decision.budget.crash_restarts,
                        no_progress_streak=decision.budget.no_progress_streak,
                        backoff_level=decision.budget.backoff_level, last_cause=cause.value,
                        setup_failures=decision.budget.setup_failures,
                        preempt_streak=decision.budget.preempt_streak,
                        pid=None, pid_start_time=None)
        if epochs_after is not None:
            counters["epochs_done"] = epochs_after
        if decision.new_batch is not None:
            counters["batch_override"] = decision.new_batch
            self.host.event(name, "batch", decision.reason, old=self.host.store.get_job(name).batch_override,
                       new=decision.new_batch)
        on = ending_event(decision.action, run.then == "restart")
        if on is On.ENDED_REQUEUE:
            self.host.transition(name, on, "restart requested", **counters)
            return
        if on is On.ENDED_RESTART:
            counters["next_start_at"] = time.time() + decision.delay_s
            reason = f"{decision.reason}; next attempt in {decision.delay_s:.1f}s"
        elif on is On.ENDED_HOLD and run.extra.get("hold_reason"):
            reason = f"{decision.reason}: {run.extra['hold_reason']}"
        else:
            reason = decision.reason
        self.host.transition(name, on, reason, **counters)


def _int(value) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
