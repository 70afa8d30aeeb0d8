"""The daemon's job lifecycle, on one thread that owns all job state.

The reactor (supervisor/daemon/reactor.py) hands it child exits and calls from other threads;
everything else runs in ``housekeeping`` once per tick. Every state change goes through
``transition`` (the table in supervisor/jobs/machine.py). The daemon holds the runtime state (the
live attempts, those ending, the steps waiting to be retried) and its collaborators, each with one
job and a narrow view of the daemon (a Protocol in its module):

- ``launches`` (launches.py): start a job's next attempt, and recheck jobs held by a preflight;
- ``attempts`` (attempts.py): watch live attempts (progress, stalls, snapshots), and end them;
- ``endings`` (ending.py): an ended attempt's facts, the policy's decision, applying it;
- ``scheduling`` (scheduling.py): which due jobs start on which GPUs, and GPU health holds;
- ``commands`` (commands.py): what users ask (submit, stop, start, restart, remove, drill, edit, extend);
- ``workers`` (workers.py): the threads that do everything that may block.
"""

from __future__ import annotations

import functools
import json
import os
import time
from concurrent.futures import Future
from typing import Any, Callable, Optional

from supervisor.daemon.attempts import Attempts
from supervisor.daemon.commands import CommandError, Commands, PurgeFailed
from supervisor.daemon.config import DaemonConfig
from supervisor.daemon.ending import AttemptEnding
from supervisor.daemon.health import DeviceHealth
from supervisor.daemon import jobwork, specs
from supervisor.daemon import reconcile as readopt
from supervisor.daemon import trackers as tracker_runs
from supervisor.daemon.launches import Launches
from supervisor.daemon.loop_lag import LoopLag
from supervisor.daemon.reactor import Reactor
from supervisor.daemon.running import Running
from supervisor.daemon.scheduling import GpuScheduling
from supervisor.daemon.workers import STEP_RETRY_S, Workers
from supervisor.jobs.edit import Edit
from supervisor.jobs.spec import JobSpec, SpecError
from supervisor.jobs.machine import Do, IllegalTransition, On, move
from supervisor.jobs.states import Cause, JobState
from supervisor.observe.logging import get_logger
from supervisor.observe.notify import Notifications
from supervisor.paths import Home
from supervisor.placement import Placement
from supervisor.probes.progress import ProgressFiles
from supervisor.process import launcher
from supervisor.process.executor import make_executor
from supervisor.process import jobenv
from supervisor.process.jobenv import JobEnvironment
from supervisor import safefs
from supervisor.store import JobRecord, Store

__all__ = ["Daemon", "CommandError", "PurgeFailed", "IllegalTransition", "PROCESS_STATES"]  # what others import

S = JobState
PROCESS_STATES = tuple(s.value for s in JobState if s.has_process)
BACKUP_INTERVAL_S = 600.0  # how old state.db.backup may get (the recovery hint for a damaged database)


class Daemon:
    def __init__(self, home: Home, config: Optional[DaemonConfig] = None, gpu_probe=None):
        safefs.check_as_user_works()  # as root: never fall back to touching job files as root
        self.home = home.ensure()
        self.daemon_id = str(home.root.resolve())  # in every child's environment: which daemon's job it is
        self.config = config or DaemonConfig()
        self.store = Store(home.db)
        self.log = get_logger()
        self.health = DeviceHealth(gpu_probe)
        self.running: dict[str, Running] = {}
        # Attempts that exited but whose end is not on disk yet (a full disk): retried, never dropped.
        self.ending: dict[str, Running] = {}
        self.retry_at: dict[str, float] = {}  # job -> monotonic time before which a failed step waits
        self.progress_files = ProgressFiles()
        self.reactor = Reactor()  # child exits, and calls from the control and drop-directory threads
        # Blocking work (files, processes, checkpoints, commands) runs there; results come back as events.
        self.workers = Workers(self.reactor.wake)
        self._run_uids: dict[str, int] = {}  # job -> the uid it runs as, noted on the loop for the workers
        self.loop_lag = LoopLag(self.log)
        self.stopping = False
        self.reload_requested = False
        self.hooks: list[Callable[["Daemon"], None]] = []  # extra housekeeping (inbox, metrics, ...)
        # Where attempts run (config.yaml's executor: local children, or Slurm jobs): process mechanics only.
        self.executor = make_executor(self.config, self.daemon_id, lambda: self.config.slurm, self.run_uid)
        self.hooks.append(self.executor.housekeeping)
        self.attempts = Attempts(self)
        self.launches = Launches(self, self.attempts)
        self.scheduling = GpuScheduling(self, self.launches)
        self.endings = AttemptEnding(self, self.attempts, self.scheduling)
        self.commands = Commands(self)
        self._backup_due = 0.0  # monotonic; the first tick takes one
        self.notifications = Notifications(self)  # listens on the store; sends off the loop

    # -- the one choke point for state changes ----------------------------
    def transition(self, name: str, on: On, reason: str, actor: Optional[str] = None, *,
                   grace: float = 0.0, **fields: Any) -> None:
        """Apply the state machine (jobs/machine.py): the table's move for the job's state and ``on``,
        recorded with ``fields``, then the move's actions (``grace``: SIGTERM to SIGKILL)."""
        job = self.store.get_job(name)
        old = S(job.state)
        try:
            found = move(old, on)
        except IllegalTransition as err:
            raise IllegalTransition(f"{name}: internal error: {err} ({reason})") from None
        new = found.to
        self.store.update_job(name, state=new.value, state_reason=reason, **fields)
        if old is not new:
            self.store.add_event(name, "state", reason, from_state=old.value, to_state=new.value, actor=actor,
                                 data={"on": on.value})
            self.log.info("transition", job=name, **{"from": old.value}, to=new.value, on=on.value, reason=reason,
                          actor=actor)
        for action in found.actions:
            self._act(action, name, grace)

    def _act(self, action: Do, name: str, grace: float) -> None:
        if action is Do.SIGNAL_TERM:
            self.attempts.send_term(name, self.running[name], grace)
        elif action is Do.END_TRACKER_RUN:
            tracker_runs.finalize(self, name, self.store.get_job(name).state)
        elif action is Do.FORGET_HEALTH:
            self.health.forget(name)

    def event(self, name: str, kind: str, reason: str, actor: Optional[str] = None, **data: Any) -> None:
        self.store.add_event(name, kind, reason, actor=actor, data=data or None)
        self.log.info(kind, job=name, reason=reason, actor=actor, **data)

    # -- loop ----------------------------------------------------------------
    def start(self) -> None:
        if launcher.become_subreaper():
            self.log.debug("subreaper", enabled=True)
        self.reconcile()

    def run_forever(self) -> None:
        self.start()
        next_tick = 0.0
        while not self.stopping:
            now = time.monotonic()
            try:
                if now >= next_tick:
                    next_tick = now + self.config.tick_s
                    with self.loop_lag.busy("housekeeping"):
                        self.housekeeping()
                self.step(max(0.0, next_tick - time.monotonic()))
            except Exception as exc:  # last resort: the daemon outlives any one failure and keeps serving
                self.log.exception("loop step failed", error=repr(exc))
        self.shutdown()

    def step(self, timeout: float) -> None:
        """Wait for one batch of events (child exits, workers' results, control calls) and handle them."""
        due = self.workers.next_due()
        ready = self.reactor.wait(timeout if due is None else min(timeout, due))
        with self.loop_lag.busy("events"):
            for name in ready:
                self.guarded(self.endings.on_child_exit, name)
            self.workers.deliver()
            self.reactor.run_calls()

    def call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run ``fn`` on the loop thread and return its result (used by the control server)."""
        return self.reactor.call(fn, timeout)

    def post(self, fn: Callable[[], Any]) -> Future:
        """Queue ``fn`` for the loop thread without waiting (the drop-directory watcher's thread)."""
        return self.reactor.post(fn)

    def request_stop(self) -> None:
        """Signal-handler safe: ask the loop to end (training keeps running)."""
        self.stopping = True
        self.reactor.wake()

    def shutdown(self) -> None:
        """Stop taking work and leave training running; a new daemon re-adopts it."""
        for run in self.running.values():
            run.child.close()
        self.running.clear()
        self.workers.close()
        self.notifications.close()
        try:
            self.store.backup()  # the copy the recovery hint for a damaged database points at
        except Exception as exc:  # a full disk: the database itself is fine
            self.log.error("could not back up the state database", error=repr(exc))
        self.log.info("daemon stopped", note="training processes left running")
        self.store.close()

    # -- housekeeping ------------------------------------------------------
    def housekeeping(self) -> None:
        # Each step on its own: a failing one (a full disk under the state database, a bug) is
        # logged and the others still run, this tick and every later one.
        steps: list[Callable[[], Any]] = [
            lambda: launcher.reap_orphans({r.child.pid for r in self.running.values()}),
            self._keep_state_file, self.attempts.watch_all, self._retry_attempt_ends, self._pick_up_lost_jobs,
            self.scheduling.route_gpu_events, self.scheduling.release_healthy_holds,
            self.launches.recheck_preflight_holds, self.scheduling.start_due_jobs,
            *(functools.partial(hook, self) for hook in self.hooks),
        ]
        for step in steps:
            try:
                step()
            except Exception as exc:
                what = getattr(getattr(step, "func", step), "__name__", repr(step))
                self.log.error("housekeeping step failed", step=what, error=repr(exc))

    def _keep_state_file(self) -> None:
        """state.db deleted or replaced under us: say so and write ours back (a restart would
        otherwise find no jobs while their trainings run on unsupervised); keep a backup."""
        problem = self.store.file_problem()
        if problem:
            self.log.error("state database " + problem + " while the daemon ran; writing it back",
                           path=str(self.store.path))
            aside = self.store.write_back()
            if aside is not None:
                self.log.warning("the file found in its place is kept", path=str(aside))
        if time.monotonic() >= self._backup_due:
            self._backup_due = time.monotonic() + BACKUP_INTERVAL_S
            self.store.backup()

    def _pick_up_lost_jobs(self) -> None:
        """A job step failed half-way: pick its process (or its end) up again."""
        busy = self.running.keys() | self.ending.keys()
        if any(j.name not in busy for j in self.store.list_jobs(PROCESS_STATES)):
            self.reconcile()

    def _retry_attempt_ends(self) -> None:
        """Attempt ends that could not be written (a full disk): try again once their wait is over."""
        now = time.monotonic()
        for name in list(self.ending):
            if self.retry_at.get(name, 0) <= now:
                self.guarded(self.endings.end_attempt, name)

    def end_attempt(self, name: str) -> None:
        """Gather an ended attempt's facts again (its snapshot finished, or its retry is due)."""
        self.endings.end_attempt(name)

    def guarded(self, fn: Callable[[str], None], name: str) -> None:
        """One job's failure (a full disk, an unexpected state) is reported, and the daemon keeps serving."""
        step = getattr(getattr(fn, "func", fn), "__name__", "step")  # a partial names its function
        try:
            fn(name)
        except OSError as exc:
            wait = STEP_RETRY_S
            self.log.error("job step failed", job=name, step=step, error=str(exc), retry_in_s=wait)
            self.retry_at[name] = time.monotonic() + wait  # kept in memory: the store may be what failed
            try:
                self.store.add_event(name, "error", f"{step}: {exc}; retrying in {wait:g}s")
                if S(self.store.get_job(name).state) in (S.QUEUED, S.BACKOFF):
                    self.transition(name, On.LAUNCH_ERROR, f"{step} failed: {exc}; retrying in {wait:g}s",
                                    next_start_at=time.time() + wait)
            except Exception:  # the store itself may be on the full disk
                pass
        except Exception as exc:  # a bug must not take every other job down with it
            self.log.exception("job step failed", job=name, step=step, error=repr(exc))

    # -- a job, loaded once for the steps that act on it ---------------------------
    def job_work(self, job: JobRecord, spec: Optional[JobSpec]) -> jobwork.JobWork:
        """The job as its steps (and the workers) take it: its record, parsed spec, owner's identity,
        edited keys and config.yaml's pass_env, read here on the loop (workers never use the store)."""
        work = jobwork.JobWork(job, spec, self.home, self.job_identity(job), frozenset(self.edited_keys(job.name)),
                               pass_env=tuple(self.config.pass_env))
        self._run_uids[job.name] = work.uid  # a job's owner never changes while the job exists
        return work

    def job_identity(self, job: JobRecord) -> Optional[safefs.Identity]:
        """Who the job's files are touched as, and its training runs as; None: the daemon's own user."""
        if job.owner_uid is None or os.geteuid() != 0 or job.owner_uid == 0:
            return None
        return safefs.identity_for(job.owner_uid)

    def run_uid(self, name: str) -> int:
        """The uid job ``name``'s processes run as: only such a process is taken for the job's.

        Workers ask this (the executor's /proc scans): it answers from what the loop noted when it
        handed the job to a worker (``job_work``, ``reconcile``), never from the store."""
        uid = self._run_uids.get(name)
        return uid if uid is not None else self.note_run_uid(self.store.get_job(name))

    def note_run_uid(self, job: Optional[JobRecord]) -> int:
        identity = self.job_identity(job) if job is not None else None
        uid = identity.uid if identity is not None else os.geteuid()
        if job is not None:
            self._run_uids[job.name] = uid  # a job's owner never changes while the job exists
        return uid

    def forget_run_uid(self, name: str) -> None:
        self._run_uids.pop(name, None)

    def job_environment(self, job: JobRecord, spec: JobSpec) -> JobEnvironment:
        """The job's env:, env_file: (read as its owner) and config.yaml's pass_env."""
        return jobenv.job_environment(spec.env, spec.env_file, self.job_identity(job), self.config.pass_env)

    def as_owner(self, name: str):
        """File operations inside the job's directories run as its user (see supervisor.safefs)."""
        return safefs.as_user(self.job_identity(self.store.get_job(name)))

    def edited_keys(self, name: str) -> set[str]:
        """Train arguments changed by ``edit`` since submission: the checkpoint may differ on those."""
        keys = set()
        for e in self.store.events(name):
            if e.kind == "edit" and e.data:
                keys.add(str(json.loads(e.data).get("key")))
        return keys

    def spec(self, name: str) -> JobSpec:
        """The job's stored spec; ``SpecError`` when it no longer validates (e.g. an Ultralytics
        upgrade dropped an argument): callers that list jobs show that, never fail on it."""
        return specs.spec_of(self.store.get_job(name))

    def spec_of(self, job: JobRecord) -> JobSpec:
        """``spec`` for a row already read (parsed once per stored text); ``SpecError`` likewise."""
        return specs.spec_of(job)

    def valid_specs(self) -> list[tuple[JobRecord, JobSpec]]:
        """Every job whose stored spec still validates, with it (for loops over all jobs)."""
        return specs.with_specs(self.store.list_jobs())

    def fail_unparseable(self, name: str, err: SpecError, on: On, actor: Optional[str] = None,
                         **fields: Any) -> None:
        self.transition(name, on, f"the stored job spec no longer validates: {'; '.join(err.problems)} "
                        "(remove the job and submit it again)", actor, **fields)

    # -- what other parts call by these names: the collaborators act ---------------
    def reconcile(self) -> None:
        """Re-adopt live attempts after a restart; treat vanished ones as ended (reconcile.py)."""
        readopt.reconcile(self)

    def launch(self, name: str, actor: Optional[str] = None) -> None:
        self.launches.launch(name, actor)

    def start_due_jobs(self) -> Placement:
        return self.scheduling.start_due_jobs()

    def gpu_inventory(self) -> list[int]:
        return self.scheduling.gpu_inventory()

    def gpus_held(self, jobs: list[JobRecord], requests=(), sick: Optional[dict[int, str]] = None) -> dict:
        return self.scheduling.gpus_held(jobs, requests, sick)

    def terminate(self, name: str, on: On, cause: Cause, reason: str, grace: float, actor: Optional[str] = None,
                  user_stop: bool = False, then: Optional[str] = None) -> None:
        self.attempts.terminate(name, on, cause, reason, grace, actor, user_stop, then)

    def submit(self, text: str, source: str, actor: Optional[str] = None, owner: Optional[tuple[int, int]] = None,
               on_accept: Optional[Callable[[], Any]] = None) -> JobSpec:
        return self.commands.submit(text, source, actor, owner, on_accept)

    def stop_job(self, name: str, actor: str) -> None:
        self.commands.stop_job(name, actor)

    def start_job(self, name: str, actor: str) -> None:
        self.commands.start_job(name, actor)

    def restart_job(self, name: str, actor: str) -> None:
        self.commands.restart_job(name, actor)

    def remove_job(self, name: str, purge: bool, actor: str) -> Future:
        return self.commands.remove_job(name, purge, actor)

    def drill_job(self, name: str, kind: str, actor: str) -> str:
        return self.commands.drill_job(name, kind, actor)

    def edit(self, name: str, values: dict[str, Any], force: bool, actor: Optional[str]) -> Edit:
        return self.commands.edit(name, values, force, actor)

    def extend(self, name: str, epochs: int, actor: Optional[str]) -> JobSpec:
        return self.commands.extend(name, epochs, actor)
