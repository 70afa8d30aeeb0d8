"""Starting a job's next attempt: decided on the loop, done on a worker, recorded on the loop.

``launch`` loads the job once (its record, parsed spec, owner's identity and edited keys: one
``jobwork.JobWork``, in an ``Order`` with the attempt's number and GPUs) and decides on the loop
(the spec validates, the GPUs are healthy and released); the checks, strays, files and the spawn
run on a worker (``jobwork.prepare_launch``), and every later step takes the same ``Order``:
``_launched`` records what came back (a hold naming what is missing, a finished job, or the
attempt, from then on watched). A job held by such a check is looked at again
(``recheck_preflight_holds``) until what it needs is there.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from supervisor.daemon import gpus as gpu_facts
from supervisor.daemon import jobwork, specs
from supervisor.daemon import trackers as tracker_runs
from supervisor.daemon.running import Running
from supervisor.daemon.workers import STEP_RETRY_S, Outcome
from supervisor.jobs.machine import On
from supervisor.jobs.spec import JobSpec, SpecError
from supervisor.jobs.states import JobState
from supervisor.process import launcher

if TYPE_CHECKING:
    from supervisor.daemon.config import DaemonConfig
    from supervisor.daemon.health import DeviceHealth
    from supervisor.daemon.workers import Workers
    from supervisor.store import JobRecord, Store

S = JobState
LAUNCHING = "starting: checking its files and checkpoints"  # the reason while a launch's worker runs


class LaunchHost(tracker_runs.TrackerHost, Protocol):
    """What a launch uses of the daemon: named here so this module needs nothing from core.py."""

    store: "Store"
    config: "DaemonConfig"
    health: "DeviceHealth"
    workers: "Workers"
    executor: Any
    daemon_id: str
    running: dict[str, Running]
    retry_at: dict[str, float]

    def transition(self, name: str, on: On, reason: str, actor: Optional[str] = None, *,
                   grace: float = 0.0, **fields: Any) -> None: ...
    def guarded(self, fn: Callable[[str], None], name: str) -> None: ...
    def job_work(self, job: "JobRecord", spec: Optional[JobSpec]) -> jobwork.JobWork: ...
    def run_uid(self, name: str) -> int: ...
    def fail_unparseable(self, name: str, err: SpecError, on: On, actor: Optional[str] = None,
                         **fields: Any) -> None: ...


class Watcher(Protocol):
    """Who watches an attempt once it is recorded (supervisor/daemon/attempts.py)."""

    def watch(self, name: str, run: Running) -> None: ...


@dataclass(frozen=True)
class Order:
    """One launch, loaded once on the loop: what every step of it takes instead of a job's name."""

    work: jobwork.JobWork
    attempt: int
    gpus: tuple[int, ...]
    actor: Optional[str]
    abandoned: threading.Event = field(default_factory=threading.Event)  # set: the loop stopped waiting

    @property
    def name(self) -> str:
        return self.work.name

    @property
    def devices(self) -> Optional[str]:
        return ",".join(str(g) for g in self.gpus) or None


class Launches:
    """The launches in flight, and the jobs held until a preflight check passes."""

    def __init__(self, host: LaunchHost, watcher: Watcher):
        self.host = host
        self.watcher = watcher
        self.launching: dict[str, tuple[int, ...]] = {}  # job -> its GPUs, while a launch's worker runs
        # Jobs held because a path is missing or a checkpoint is not theirs: job -> when to look again.
        self.preflight_holds: dict[str, float] = {}

    def launch(self, name: str, actor: Optional[str] = None, gpus: tuple[int, ...] = ()) -> None:
        """Decide on the loop (spec, GPUs, devices); the files, strays and the spawn go to a worker,
        and ``_launched`` records what it did. Meanwhile the job waits, saying so. ``gpus``: the
        set placement just gave it (else the job's own)."""
        host = self.host
        job = host.store.get_job(name)
        try:
            spec = specs.spec_of(job)
        except SpecError as err:  # once, with the reason, not a traceback every tick
            host.fail_unparseable(name, err, On.LAUNCH_REFUSED, actor, next_start_at=None)
            return
        gpus = gpus or gpu_facts.job_gpus(job, spec)
        if not host.executor.places_gpus:
            gpus = ()  # executor: slurm: Slurm allocates the GPUs; in the allocation they are 0..N-1
        elif spec.gpus and len(gpus) != spec.gpus:
            return  # a `gpus: N` job starts only through placement, which picks its set
        if not self._devices_ready(name, gpus, spec, actor):
            return
        order = Order(host.job_work(job, spec), job.attempts + 1, tuple(gpus), actor)
        trackers = tracker_runs.plan_for_attempt(host, order.work, order.attempt, order.devices)  # the old progress
        task = functools.partial(jobwork.prepare_launch, order.work, host.executor, order.attempt, order.devices,
                                 order.abandoned, trackers)
        done = functools.partial(self._launched, order)
        if host.workers.submit(("job", name), task, jobwork.LAUNCH_DEADLINE_S, done):
            self.launching[name] = order.gpus
            if job.state_reason != LAUNCHING:
                host.store.update_job(name, state_reason=LAUNCHING)

    def _devices_ready(self, name: str, gpus: tuple[int, ...], spec: JobSpec, actor: Optional[str]) -> bool:
        """Hold the job on unhealthy devices; wait until the last attempt's GPU memory is released."""
        host = self.host
        reasons = host.health.unhealthy_reasons(gpus)
        if reasons:
            host.event(name, "gpu", "; ".join(reasons))
            host.transition(name, On.DEVICES_UNHEALTHY, "devices unhealthy: " + "; ".join(reasons), actor)
            return False
        if not gpus or host.health.probe is None:
            return True  # nothing to wait for: skip the scans of every other job's processes below
        others = {r.child.pid for n, r in host.running.items() if n != name}
        marked = launcher.marked_processes({n: host.run_uid(n) for n in host.running if n != name}, host.daemon_id)
        others |= {p.pid for p in marked}
        gate = host.health.release_gate(name, gpus, spec.health, others)
        if gate.note:
            host.event(name, "gpu", gate.note)
        return gate.ready

    def _launched(self, order: Order, outcome: Outcome) -> None:
        """The worker's half of a launch is done: record it (hold, complete, or watch the attempt)."""
        self.launching.pop(order.name, None)
        if not outcome.ok:
            order.abandoned.set()
            self._launch_failed(order.name, outcome)
            return
        self.host.guarded(functools.partial(self._take_launch, order=order, found=outcome.value), order.name)

    def _take_launch(self, name: str, order: Order, found: jobwork.Launch) -> None:
        host, actor = self.host, order.actor
        job = host.store.get_job(name)  # as it is now: the job may have been stopped or removed meanwhile
        if job is None or S(job.state) not in (S.QUEUED, S.BACKOFF):
            if found.child is not None:
                self._abandon(name, found.child)
            return
        if found.blocker is not None:
            self._hold_for(order, found.blocker)
            return
        self.preflight_holds.pop(name, None)
        if found.strays:
            host.event(name, "orphans", f"{len(found.strays)} process(es) of the job alive before launch; killed",
                       pids=found.strays, survivors=found.stray_survivors)
        for note in found.notes:
            host.event(name, "checkpoint", note)
        if found.finished:
            host.transition(name, On.FOUND_FINISHED, found.finished)
            return
        if found.clear_run_dir:
            host.store.update_job(name, run_dir=None)
        if found.env_error is not None:
            host.transition(name, On.LAUNCH_REFUSED, f"{found.env_error}; fix it and `yolo-supervisorctl start {name}`",
                            actor)
        elif found.spawn_error is not None:
            host.transition(name, On.LAUNCH_REFUSED, f"could not start the training process: {found.spawn_error}",
                            actor)
        elif found.child is not None:
            self._record_attempt(job, order, found)

    def _launch_failed(self, name: str, outcome: Outcome) -> None:
        """A launch's worker failed (a full disk, Slurm's controller down) or did not answer in
        time (a hung filesystem): the job backs off and is tried again, as ``guarded`` does."""
        host, wait = self.host, STEP_RETRY_S
        problem = outcome.problem(jobwork.LAUNCH_DEADLINE_S)
        host.log.error("launch failed", job=name, error=problem, retry_in_s=wait)
        host.retry_at[name] = time.monotonic() + wait
        job = host.store.get_job(name)
        if job is None:
            return
        host.store.add_event(name, "error", f"launch: {problem}; retrying in {wait:g}s")
        if S(job.state) in (S.QUEUED, S.BACKOFF):
            host.transition(name, On.LAUNCH_ERROR, f"launch failed: {problem}; retrying in {wait:g}s",
                            next_start_at=time.time() + wait)

    def _hold_for(self, order: Order, blocker: str) -> None:
        """Held until what the job needs is there (``recheck_preflight_holds`` looks again)."""
        self.preflight_holds[order.name] = time.monotonic() + self.host.config.preflight_recheck_s
        self.host.event(order.name, "preflight", blocker, order.actor)
        self.host.transition(order.name, On.PREFLIGHT_FAILED, blocker, order.actor)

    def recheck_preflight_holds(self) -> None:
        """A job held for a missing path is queued again once the path is back (an NFS mount after
        a reboot); the check runs on a worker, and one that does not answer leaves the job held."""
        host, now = self.host, time.monotonic()
        for name, due in list(self.preflight_holds.items()):
            job = host.store.get_job(name)
            if job is None or job.state != S.HELD.value:
                self.preflight_holds.pop(name, None)
                continue
            if due > now or host.workers.busy(("job", name)):
                continue  # not due, or the last check has not answered yet
            task = functools.partial(jobwork.launch_blocker, host.job_work(job, specs.spec_of(job)))
            if host.workers.submit(("job", name), task, jobwork.LAUNCH_DEADLINE_S,
                                   functools.partial(self._rechecked, name)):
                self.preflight_holds[name] = now + host.config.preflight_recheck_s

    def _rechecked(self, name: str, outcome: Outcome) -> None:
        job = self.host.store.get_job(name)
        if not outcome.ok or outcome.value is not None or job is None or job.state != S.HELD.value:
            return  # still missing, or no answer: looked at again after preflight_recheck_s
        if self.preflight_holds.pop(name, None) is None:
            return  # released meanwhile (an edit, a start)
        self.host.event(name, "preflight", "what the job needs is there again")
        self.host.transition(name, On.PREFLIGHT_PASSED, "preflight passed: what the job needs is there again")

    def _record_attempt(self, job: "JobRecord", order: Order, found: jobwork.Launch) -> None:
        host, name, child, resume, attempt = self.host, job.name, found.child, found.resume, order.attempt
        assert child is not None
        epochs_before, batch_before = found.position
        devices = order.devices
        at = f"epoch {epochs_before + 1} batch {batch_before + 1}" if batch_before else f"epoch {epochs_before}"
        how = f"resume from {resume} ({at})" if resume else "fresh start"
        how += f" on GPU {devices}" if devices else ""
        # One transaction: a daemon killed between the attempt row and the job's move would leave
        # an open attempt on a job in backoff, and every later launch would collide with it.
        try:
            with host.store.transaction():
                attempt_id = host.store.start_attempt(name, attempt, child.pid or None, child.start_time,
                                                      epochs_before, str(resume) if resume else None, batch_before,
                                                      devices)
                host.store.update_attempt(attempt_id, **host.executor.recorded(child))
                if devices != job.devices:
                    host.store.update_job(name, devices=devices)  # the set every later attempt uses
                if job.extend_pending:
                    host.store.update_job(name, extend_pending=None)  # the restored state is on disk now
                host.transition(name, On.ATTEMPT_STARTED, f"attempt {attempt}: {how}", order.actor,
                                pid=child.pid or None, pid_start_time=child.start_time, attempts=attempt,
                                next_start_at=None, **host.executor.recorded(child))
        except BaseException:
            self._abandon(name, child)
            raise
        self.watcher.watch(name, Running(child, attempt_id, attempt, epochs_before, found.log_offset, batch_before,
                                         images_before=found.images))

    def _abandon(self, name: str, child: launcher.Child) -> None:
        """An attempt that could not be recorded (a full disk) must not train unwatched, nor leak its pidfd."""
        executor = self.host.executor
        task = functools.partial(jobwork.abandon, executor, name, child)
        if not self.host.workers.submit(("abandon", name, child.pid, child.pidfd), task, jobwork.KILL_DEADLINE_S,
                                        lambda outcome: None):
            jobwork.abandon(executor, name, child)  # never left running: do it here, once
