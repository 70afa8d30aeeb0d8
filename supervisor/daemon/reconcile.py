"""After a daemon restart: the attempts the store says are live are re-adopted, or ended.

A job whose state has a process is matched with its open attempt and the executor's process (the
pid and its start time, or the Slurm job); a live one is watched again, with any stop that was
under way (its cause and its KILL's wall time); one that vanished while no daemon watched is
watched as already ended, so its end goes through the policy like any other.
"""

from __future__ import annotations

import functools
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from supervisor.daemon.running import Running
from supervisor.jobs.machine import On
from supervisor.jobs.states import Cause, JobState
from supervisor.process import launcher

if TYPE_CHECKING:
    from supervisor.daemon.attempts import Attempts
    from supervisor.store import JobRecord, Store

S = JobState


class ReconcileHost(Protocol):
    """What re-adoption uses of the daemon: named here so this module needs nothing from core.py."""

    store: "Store"
    executor: Any
    attempts: "Attempts"
    running: dict[str, Running]
    ending: dict[str, Running]

    def transition(self, name: str, on: On, reason: str, actor: Optional[str] = None, *,
                   grace: float = 0.0, **fields: Any) -> None: ...
    def event(self, name: str, kind: str, reason: str, actor: Optional[str] = None, **data: Any) -> None: ...
    def guarded(self, fn: Callable[[str], None], name: str) -> None: ...
    def note_run_uid(self, job: Optional["JobRecord"]) -> int: ...


def reconcile(host: ReconcileHost) -> None:
    """Re-adopt live attempts; treat vanished ones as ended and let the policy decide."""
    for job in host.store.list_jobs():
        if not S(job.state).has_process or job.name in host.running or job.name in host.ending:
            continue
        host.guarded(functools.partial(reconcile_job, host), job.name)  # at start too: one job never ends the daemon


def reconcile_job(host: ReconcileHost, name: str) -> None:
    job = host.store.get_job(name)
    host.note_run_uid(job)
    open_attempt = host.store.open_attempt(name)
    child = host.executor.adopt(job, open_attempt)
    if open_attempt is None:
        if child is not None:
            child.close()
        host.transition(name, On.NO_OPEN_ATTEMPT, "no open attempt found on daemon start")
        return
    run = Running(child or _dead_child(job), open_attempt.id, open_attempt.number,
                  open_attempt.epochs_before, log_offset=0)
    _restore_stop_intent(run, open_attempt)
    if child is not None:
        host.event(name, "adopted", f"re-adopted attempt {run.attempt_no} "
                   f"({host.executor.describe(job, open_attempt)})")
        if run.kill_at is not None:  # the last daemon may have died between the stop's record and its TERM
            host.attempts.send_term(name, run, max(0.0, run.kill_at - time.monotonic()))
    else:
        host.event(name, "vanished", f"attempt {run.attempt_no} ({host.executor.describe(job, open_attempt)}) "
                   "ended while the daemon was down")
    host.attempts.watch(name, run)


def _restore_stop_intent(run: Running, attempt) -> None:
    """A stop, restart or stall kill under way when the last daemon ended goes on: the same
    cause, and SIGKILL at the same wall time (at once if that has passed)."""
    if attempt.stop_cause is None:
        return
    run.kill_cause = Cause(attempt.stop_cause)
    run.user_stop, run.then = bool(attempt.stop_by_user), attempt.stop_then
    if attempt.stop_detail:
        run.extra["stall_reason"] = attempt.stop_detail
    if attempt.kill_at is not None:
        run.kill_at = time.monotonic() + max(0.0, attempt.kill_at - time.time())


def _dead_child(job: "JobRecord") -> launcher.Child:
    """A stand-in for an attempt that ended while no daemon watched: a pidfd that is readable at once."""
    r, w = os.pipe()
    os.close(w)  # EOF: the selector reports it readable immediately
    return launcher.Child(job=job.name, pid=job.pid or 0, start_time=job.pid_start_time or 0, pidfd=r)
