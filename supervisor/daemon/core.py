"""The daemon's job lifecycle, on one thread that owns all job state.

The reactor (supervisor/daemon/reactor.py) hands it child exits and calls from other threads;
everything else (starting due jobs through placement, checkpoint snapshots, stall checks, kill
escalation) runs in ``housekeeping`` once per tick. Every state change goes through ``transition``;
the policy (supervisor/policy.py) decides what an ended attempt leads to, placement
(supervisor/placement.py) which waiting job starts on which GPUs.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Optional, Union

from supervisor.child import drill
from supervisor.contract import Progress
from supervisor.daemon.config import DaemonConfig
from supervisor.daemon.health import DeviceHealth
from supervisor.daemon import gpus as gpu_facts
from supervisor.daemon import jobwork
from supervisor.daemon import trackers as tracker_runs
from supervisor.daemon.loop_lag import LoopLag
from supervisor.daemon.reactor import Reactor
from supervisor.daemon.running import Running
from supervisor.daemon.workers import Outcome, Workers
from supervisor.daemon.scheduling import GpuScheduling
from supervisor.daemon.ending import AttemptEnding
from supervisor.daemon.resume import choose
from supervisor.jobs.edit import Edit, plan_edit
from supervisor.jobs.spec import Health, JobSpec, SpecError, parse_spec_text, spec_to_yaml
from supervisor.jobs.machine import Do, IllegalTransition, On, move  # noqa: F401 - IllegalTransition: re-exported
from supervisor.jobs.states import Cause, JobState
from supervisor.observe.logging import get_logger
from supervisor.control.peer import actor_for_uid
from supervisor.observe.notify import Notifications, job_target_problems
from supervisor.paths import Home
from supervisor.placement import Request, impossible
from supervisor.probes.progress import ProgressFiles, stall_verdict
from supervisor.probes.vault import CheckpointVault
from supervisor.process import launcher
from supervisor.process.executor import make_executor
from supervisor.process import jobenv
from supervisor.process.jobenv import JobEnvironment
from supervisor import safefs
from supervisor.store import JobRecord, Store

S = JobState
LAUNCHING = "starting: checking its files and checkpoints"  # the reason while a launch's worker runs
STEP_RETRY_S = 15.0  # a job step that failed on the disk (full, read-only) is tried again after this
PROCESS_STATES = tuple(s.value for s in JobState if s.has_process)
NOTES_PER_ATTEMPT = 5  # the child's notes recorded as events per attempt; the rest are counted in one
NOTE_CHARS = 500  # of one note
BACKUP_INTERVAL_S = 600.0  # how old state.db.backup may get (the recovery hint for a damaged database)


class CommandError(Exception):
    """A control request that cannot be done (unknown job, wrong state); the message is for the user."""


class PurgeFailed(CommandError):
    """``remove --purge`` could not delete everything: the job is kept, the message says what is left."""


class Daemon(GpuScheduling, AttemptEnding):
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
        self._snapshot_retry_at: dict[str, float] = {}
        # Jobs held because a path is missing or a checkpoint is not theirs: job -> when to look again.
        self.preflight_holds: dict[str, float] = {}
        self._placed: dict[str, tuple[int, ...]] = {}  # job -> the GPUs placement just gave it (for launch)
        self.progress_files = ProgressFiles()
        self.reactor = Reactor()  # child exits, and calls from the control and drop-directory threads
        # Blocking work (files, processes, checkpoints, commands) runs there; results come back as events.
        self.workers = Workers(self.reactor.wake)
        self.launching: dict[str, tuple[int, ...]] = {}  # job -> its GPUs, while a launch's worker runs
        self._run_uids: dict[str, int] = {}  # job -> the uid it runs as, noted on the loop for the workers
        self.loop_lag = LoopLag(self.log)
        self.stopping = False
        self.reload_requested = False
        self.hooks: list[Callable[["Daemon"], None]] = []  # extra housekeeping (inbox, metrics, ...)
        # Where attempts run (config.yaml's executor: local children, or Slurm jobs): process mechanics only.
        self.executor = make_executor(self.config, self.daemon_id, lambda: self.config.slurm, self.run_uid)
        self.hooks.append(self.executor.housekeeping)
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
            self._send_term(name, self.running[name], grace)
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
                self._guarded(self.on_child_exit, name)
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
            self._keep_state_file, self._watch_all, self._retry_attempt_ends, self._pick_up_lost_jobs,
            self.route_gpu_events, self.release_healthy_holds, self.recheck_preflight_holds, self.start_due_jobs,
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

    def _watch_all(self) -> None:
        for name in list(self.running):
            self._guarded(self.watch_running, name)

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
                self._guarded(self._end_attempt, name)

    def _with_specs(self, jobs: list[JobRecord]) -> list[tuple[JobRecord, JobSpec]]:
        found = []
        for job in jobs:
            try:
                found.append((job, _parsed_spec(job.spec_yaml, job.name)))
            except SpecError:
                continue
        return found

    def _guarded(self, fn: Callable[[str], None], name: str) -> None:
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

    # -- submitting ----------------------------------------------------------
    def submit(self, text: str, source: str, actor: Optional[str] = None,
               owner: Optional[tuple[int, int]] = None,
               on_accept: Optional[Callable[[], Any]] = None) -> JobSpec:
        """Validate and queue a job. ``on_accept`` runs once the spec is valid, inside the
        transaction that adds the job, so it happens before anyone sees the job (the drop
        directory moves the file to accepted/ there) and an exception from it adds nothing."""
        spec = parse_spec_text(text, source)
        request = Request(job=spec.name, pinned=tuple(spec.gpu_indices), count=spec.gpus or 0)
        problem = impossible(request, self.gpu_inventory()) if self.executor.places_gpus else None
        if problem:
            field = "gpus" if spec.gpus else "train.device"
            raise SpecError(source, [f"{field}: {problem.removeprefix('waiting: ')} (the daemon's GPUs: every GPU "
                                     "NVML sees, or the `gpus` list in its config.yaml)"])
        held = self.store.get_job(spec.name)
        if held is not None:
            raise SpecError(source, [_name_taken(held, owner)])
        if spec.notify is not None:  # the admin's own targets (config.yaml) are not restricted
            problems = job_target_problems(spec.notify.urls, self.config.notify.allow_hosts, resolve=False)
            if problems:
                raise SpecError(source, problems)
        uid, gid = self._owner_ids(owner, source)
        archived = self._archive_leftovers(spec.name, actor)
        self.home.ensure_job(spec.name)
        with self.store.transaction():  # StoreError (a full disk): no job, and on_accept is undone by its caller
            self.store.add_job(spec.name, spec_to_yaml(spec), S.QUEUED.value, source=source,
                               owner_uid=uid, owner_gid=gid)
            self.store.add_event(spec.name, "submitted", f"from {source}", to_state=S.QUEUED.value,
                                 actor=actor)
            if archived is not None:
                self.store.add_event(spec.name, "submitted", f"files of an earlier job named {spec.name} were "
                                     f"moved to {archived}; this job starts from nothing of theirs", actor=actor)
            if on_accept is not None:
                on_accept()
        self.log.info("submitted", job=spec.name, source=source, actor=actor)
        return spec

    def _owner_ids(self, owner: Optional[tuple[int, int]], source: str) -> tuple[Optional[int], Optional[int]]:
        """(uid, the account's primary gid): a job never runs with a group taken from its file.
        The uid is who may act on the job (supervisor/control/authz.py); as root, who it runs as."""
        if owner is None:
            return None, None
        try:
            return owner[0], safefs.identity_for(owner[0]).gid
        except safefs.NoSuchUser as err:
            if os.geteuid() != 0:
                return owner[0], None  # runs as the daemon's user anyway (a container's uid with no name)
            raise SpecError(source, [f"(owner): {err.strerror}"]) from None

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
        return uid if uid is not None else self._note_run_uid(self.store.get_job(name))

    def _note_run_uid(self, job: Optional[JobRecord]) -> int:
        identity = self.job_identity(job) if job is not None else None
        uid = identity.uid if identity is not None else os.geteuid()
        if job is not None:
            self._run_uids[job.name] = uid  # a job's owner never changes while the job exists
        return uid

    def job_environment(self, job: JobRecord, spec: JobSpec) -> JobEnvironment:
        """The job's env:, env_file: (read as its owner) and config.yaml's pass_env."""
        return jobenv.job_environment(spec.env, spec.env_file, self.job_identity(job), self.config.pass_env)

    def as_owner(self, name: str):
        """File operations inside the job's directories run as its user (see supervisor.safefs)."""
        return safefs.as_user(self.job_identity(self.store.get_job(name)))

    def _archive_leftovers(self, name: str, actor: Optional[str]) -> Optional[Path]:
        """A removed job's files (``remove`` without ``--purge``) must never become a new job's
        checkpoints, vault, results or progress: they move to jobs/.removed/ before the new job exists."""
        old = self.home.job_dir(name)
        if not os.path.lexists(old):
            return None
        archive = self.home.root / "jobs" / ".removed"
        archive.mkdir(exist_ok=True)
        target = archive / f"{name}.{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while os.path.lexists(target):
            target, n = archive / f"{name}.{time.strftime('%Y%m%d-%H%M%S')}.{n}", n + 1
        os.rename(old, target)  # renames the entry itself: a link is moved, never followed
        self.log.info("archived the files of an earlier job", job=name, to=str(target), actor=actor)
        return target

    def spec(self, name: str) -> JobSpec:
        """The job's stored spec; ``SpecError`` when it no longer validates (e.g. an Ultralytics
        upgrade dropped an argument): callers that list jobs show that, never fail on it."""
        return _parsed_spec(self.store.get_job(name).spec_yaml, name)

    def spec_of(self, job: JobRecord) -> JobSpec:
        """``spec`` for a row already read (parsed once per stored text); ``SpecError`` likewise."""
        return _parsed_spec(job.spec_yaml, job.name)

    def valid_specs(self) -> list[tuple[JobRecord, JobSpec]]:
        """Every job whose stored spec still validates, with it (for loops over all jobs)."""
        return self._with_specs(self.store.list_jobs())

    def _fail_unparseable(self, name: str, err: SpecError, on: On, actor: Optional[str] = None,
                          **fields: Any) -> None:
        self.transition(name, on, f"the stored job spec no longer validates: {'; '.join(err.problems)} "
                        "(remove the job and submit it again)", actor, **fields)

    def vault(self, name: str, spec: Optional[JobSpec] = None) -> CheckpointVault:
        keep = (spec or self.spec(name)).keep_checkpoints
        return CheckpointVault(self.home.job_vault(name), keep=keep)

    # -- launching -------------------------------------------------------------
    def launch(self, name: str, actor: Optional[str] = None) -> None:
        """Decide on the loop (spec, GPUs, devices); the files, strays and the spawn go to a worker,
        and ``_launched`` records what it did. Meanwhile the job waits, saying so."""
        job = self.store.get_job(name)
        try:
            spec = self.spec(name)
        except SpecError as err:  # once, with the reason, not a traceback every tick
            self._fail_unparseable(name, err, On.LAUNCH_REFUSED, actor, next_start_at=None)
            return
        gpus = self._placed.get(name) or gpu_facts.job_gpus(job, spec)
        if not self.executor.places_gpus:
            gpus = ()  # executor: slurm: Slurm allocates the GPUs; in the allocation they are 0..N-1
        elif spec.gpus and len(gpus) != spec.gpus:
            return  # a `gpus: N` job starts only through placement, which picks its set
        if not self._devices_ready(name, gpus, spec, actor):
            return
        work, attempt = self.job_work(job, spec), job.attempts + 1
        devices = ",".join(str(g) for g in gpus) or None
        abandoned = threading.Event()
        trackers = tracker_runs.plan_for_attempt(self, job, spec, attempt, devices)  # reads the old progress
        task = functools.partial(jobwork.prepare_launch, work, self.executor, attempt, devices, abandoned,
                                 trackers)
        done = functools.partial(self._launched, name, attempt, gpus, actor, abandoned)
        if self.workers.submit(("job", name), task, jobwork.LAUNCH_DEADLINE_S, done):
            self.launching[name] = tuple(gpus)
            if job.state_reason != LAUNCHING:
                self.store.update_job(name, state_reason=LAUNCHING)

    def job_work(self, job: JobRecord, spec: Optional[JobSpec]) -> jobwork.JobWork:
        """What a worker needs about the job, read here on the loop (workers never use the store)."""
        self._note_run_uid(job)
        return jobwork.JobWork(job, spec, self.home, self.job_identity(job), frozenset(self.edited_keys(job.name)),
                               pass_env=tuple(self.config.pass_env))

    def _launched(self, name: str, attempt: int, gpus: tuple[int, ...], actor: Optional[str],
                  abandoned: threading.Event, outcome: Outcome) -> None:
        """The worker's half of a launch is done: record it (hold, complete, or watch the attempt)."""
        self.launching.pop(name, None)
        if not outcome.ok:
            abandoned.set()
            self._launch_failed(name, outcome)
            return
        self._guarded(functools.partial(self._take_launch, attempt=attempt, gpus=gpus, actor=actor,
                                        found=outcome.value), name)

    def _take_launch(self, name: str, attempt: int, gpus: tuple[int, ...], actor: Optional[str],
                     found: jobwork.Launch) -> None:
        job = self.store.get_job(name)
        if job is None or S(job.state) not in (S.QUEUED, S.BACKOFF):  # stopped or removed meanwhile
            if found.child is not None:
                self._abandon(name, found.child)
            return
        if found.blocker is not None:
            self._hold_for(name, found.blocker, actor)
            return
        self.preflight_holds.pop(name, None)
        if found.strays:
            self.event(name, "orphans", f"{len(found.strays)} process(es) of the job alive before launch; killed",
                       pids=found.strays, survivors=found.stray_survivors)
        for note in found.notes:
            self.event(name, "checkpoint", note)
        if found.finished:
            self.transition(name, On.FOUND_FINISHED, found.finished)
            return
        if found.clear_run_dir:
            self.store.update_job(name, run_dir=None)
        if found.env_error is not None:
            self.transition(name, On.LAUNCH_REFUSED, f"{found.env_error}; fix it and `yolo-supervisorctl start {name}`", actor)
        elif found.spawn_error is not None:
            self.transition(name, On.LAUNCH_REFUSED, f"could not start the training process: {found.spawn_error}", actor)
        elif found.child is not None:
            self._record_attempt(job, attempt, found, actor, gpus)

    def _launch_failed(self, name: str, outcome: Outcome) -> None:
        """A launch's worker failed (a full disk, Slurm's controller down) or did not answer in
        time (a hung filesystem): the job backs off and is tried again, as ``_guarded`` does."""
        wait = STEP_RETRY_S
        problem = outcome.problem(jobwork.LAUNCH_DEADLINE_S)
        self.log.error("launch failed", job=name, error=problem, retry_in_s=wait)
        self.retry_at[name] = time.monotonic() + wait
        job = self.store.get_job(name)
        if job is None:
            return
        self.store.add_event(name, "error", f"launch: {problem}; retrying in {wait:g}s")
        if S(job.state) in (S.QUEUED, S.BACKOFF):
            self.transition(name, On.LAUNCH_ERROR, f"launch failed: {problem}; retrying in {wait:g}s",
                            next_start_at=time.time() + wait)

    def _hold_for(self, name: str, blocker: str, actor: Optional[str] = None) -> None:
        self.preflight_holds[name] = time.monotonic() + self.config.preflight_recheck_s
        self.event(name, "preflight", blocker, actor)
        self.transition(name, On.PREFLIGHT_FAILED, blocker, actor)

    def recheck_preflight_holds(self) -> None:
        """A job held for a missing path is queued again once the path is back (an NFS mount after
        a reboot); the check runs on a worker, and one that does not answer leaves the job held."""
        now = time.monotonic()
        for name, due in list(self.preflight_holds.items()):
            job = self.store.get_job(name)
            if job is None or job.state != S.HELD.value:
                self.preflight_holds.pop(name, None)
                continue
            if due > now or self.workers.busy(("job", name)):
                continue  # not due, or the last check has not answered yet
            task = functools.partial(jobwork.launch_blocker, self.job_work(job, self.spec(name)))
            if self.workers.submit(("job", name), task, jobwork.LAUNCH_DEADLINE_S,
                                   functools.partial(self._rechecked, name)):
                self.preflight_holds[name] = now + self.config.preflight_recheck_s

    def _rechecked(self, name: str, outcome: Outcome) -> None:
        job = self.store.get_job(name)
        if not outcome.ok or outcome.value is not None or job is None or job.state != S.HELD.value:
            return  # still missing, or no answer: looked at again after preflight_recheck_s
        if self.preflight_holds.pop(name, None) is None:
            return  # released meanwhile (an edit, a start)
        self.event(name, "preflight", "what the job needs is there again")
        self.transition(name, On.PREFLIGHT_PASSED, "preflight passed: what the job needs is there again")

    # -- changing a job ---------------------------------------------------------
    def edit(self, name: str, values: dict[str, Any], force: bool, actor: Optional[str]) -> Edit:
        """Change train arguments of a job that has no process; they apply from its next resume.

        Raises CommandError (wrong state) or EditRefused (a key that cannot change, and why)."""
        job = self.store.get_job(name)
        if name in self.running or S(job.state).has_process:
            raise CommandError(f"{name}: cannot edit a job that is {job.state}: stop it first")
        change = plan_edit(self.spec(name), values, force)
        with self.store.transaction():
            self.store.update_job(name, spec_yaml=spec_to_yaml(change.spec))
            if "device" in change.changes:
                self.store.update_job(name, devices=None)  # the edited device, not the recorded set
            for key, (old, new) in change.changes.items():
                self.event(name, "edit", f"{key}: {old!r} -> {new!r}", actor, key=key, old=old, new=new)
            for warning in change.warnings:
                self.event(name, "edit", f"warning: {warning}", actor)
        if name in self.preflight_holds:
            self.preflight_holds[name] = 0.0  # a held job is looked at again on the next tick
        return change

    def extend(self, name: str, epochs: int, actor: Optional[str]) -> JobSpec:
        """Train a completed, stopped or failed job on to ``epochs`` in all, from its last resumable state."""
        job = self.store.get_job(name)
        spec = self.spec(name)
        if name in self.running or S(job.state) not in (S.COMPLETED, S.STOPPED, S.FAILED):
            raise CommandError(f"{name}: cannot extend a job that is {job.state}: it must be completed, "
                               "stopped or failed")
        done = max(job.epochs_done or 0, spec.epochs if job.state == S.COMPLETED.value else 0)
        if epochs <= done:
            raise CommandError(f"{name}: --epochs {epochs} is not more than the {done} epochs already trained")
        run_dir = Path(job.run_dir) if job.run_dir else None
        with self.as_owner(name):  # the run directory is the job user's: read it as them
            resumable = choose(run_dir, self.vault(name, spec), extended=True).state
        if resumable is None:
            raise CommandError(f"{name}: no resumable state is kept (the final last.pt is stripped and the "
                               "vault holds no copy): it cannot be trained further")
        data = spec.model_dump(mode="json")
        data["train"]["epochs"] = epochs
        new_spec = _spec_from(data)
        with self.store.transaction():
            self.store.update_job(name, spec_yaml=spec_to_yaml(new_spec), extend_pending=1)
            self.event(name, "edit", f"epochs: {spec.epochs} -> {epochs} (extend; the learning-rate schedule "
                       f"is rebuilt for {epochs} epochs)", actor, key="epochs", old=spec.epochs, new=epochs)
            self.transition(name, On.EXTENDED, f"extended to {epochs} epochs by {actor}", actor, crash_restarts=0,
                            no_progress_streak=0, backoff_level=0, next_start_at=None, setup_failures=0,
                            preempt_streak=0)
        self.start_due_jobs()
        return new_spec

    def edited_keys(self, name: str) -> set[str]:
        """Train arguments changed by ``edit`` since submission: the checkpoint may differ on those."""
        keys = set()
        for e in self.store.events(name):
            if e.kind == "edit" and e.data:
                keys.add(str(json.loads(e.data).get("key")))
        return keys

    def _record_attempt(self, job: JobRecord, attempt: int, found: jobwork.Launch, actor: Optional[str],
                        gpus: tuple[int, ...] = ()) -> None:
        name, child, resume = job.name, found.child, found.resume
        assert child is not None
        epochs_before, batch_before = found.position
        devices = ",".join(str(g) for g in gpus) or None
        at = f"epoch {epochs_before + 1} batch {batch_before + 1}" if batch_before else f"epoch {epochs_before}"
        how = f"resume from {resume} ({at})" if resume else "fresh start"
        how += f" on GPU {devices}" if devices else ""
        # One transaction: a daemon killed between the attempt row and the job's move would leave
        # an open attempt on a job in backoff, and every later launch would collide with it.
        try:
            with self.store.transaction():
                attempt_id = self.store.start_attempt(name, attempt, child.pid or None, child.start_time,
                                                      epochs_before, str(resume) if resume else None, batch_before,
                                                      devices)
                self.store.update_attempt(attempt_id, **self.executor.recorded(child))
                if devices != job.devices:
                    self.store.update_job(name, devices=devices)  # the set every later attempt uses
                if job.extend_pending:
                    self.store.update_job(name, extend_pending=None)  # the restored state is on disk now
                self.transition(name, On.ATTEMPT_STARTED, f"attempt {attempt}: {how}", actor, pid=child.pid or None,
                                pid_start_time=child.start_time, attempts=attempt, next_start_at=None,
                                **self.executor.recorded(child))
        except BaseException:
            self._abandon(name, child)
            raise
        self._watch(name, Running(child, attempt_id, attempt, epochs_before, found.log_offset, batch_before,
                                  images_before=found.images))

    def _abandon(self, name: str, child: launcher.Child) -> None:
        """An attempt that could not be recorded (a full disk) must not train unwatched, nor leak its pidfd."""
        task = functools.partial(jobwork.abandon, self.executor, name, child)
        if not self.workers.submit(("abandon", name, child.pid, child.pidfd), task, jobwork.KILL_DEADLINE_S,
                                   lambda outcome: None):
            jobwork.abandon(self.executor, name, child)  # never left running: do it here, once

    def _watch(self, name: str, run: Running) -> None:
        """From now on the loop hears of the attempt's exit and housekeeping watches its progress."""
        run.progress_path = str(self.home.job_progress(name))
        self.running[name] = run
        self.reactor.watch(run.child.pidfd, name)

    # -- watching a running attempt ---------------------------------------------
    def watch_running(self, name: str) -> None:
        # Runs every tick for every running job: one stat of the progress file and one job row
        # read when nothing happened (the idle-CPU budget at 32 jobs is 1 % of a core).
        run = self.running[name]
        progress, key = self.progress_files.read(run.progress_path)
        if progress and key != run.progress_key:
            run.progress_key = key
            self._note_progress(name, run, progress)
        job = self.store.get_job(name)
        self._snapshot(name, job)
        if run.kill_at is not None and time.monotonic() >= run.kill_at:
            self._escalate_kill(name, run)
        elif run.kill_cause is None:
            try:
                spec = _parsed_spec(job.spec_yaml, name)
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

    def _note_progress(self, name: str, run: Running, progress: Progress) -> None:
        self._note_child_lines(name, run, progress)
        tracker_runs.take_reported(self, name, None, progress)
        job = self.store.get_job(name)
        if progress.save_dir and progress.save_dir != job.run_dir:
            self._take_run_dir(job, run, progress.save_dir)
        if progress.first_batch_at and not run.first_batch_seen:
            run.first_batch_seen = True
            self.store.mark_first_batch(run.attempt_id, progress.first_batch_at)
            if job.state == S.STARTING.value:
                self.transition(name, On.FIRST_BATCH, f"attempt {run.attempt_no}: first batch trained")

    def _take_run_dir(self, job: JobRecord, run: Running, save_dir: Any) -> None:
        """The child (the job's user) reports where it trains; only a folder inside the job's own
        runs folder (or the spec's ``project``) is believed, never one elsewhere on the host."""
        try:
            project = self.spec(job.name).train.get("project") or self.home.job_runs(job.name)
        except SpecError:
            project = self.home.job_runs(job.name)
        inside = None
        if isinstance(save_dir, str):
            with self.as_owner(job.name):
                inside = safefs.resolve_inside(save_dir, str(project))
        if inside is None:
            if run.extra.get("refused_save_dir") != save_dir:  # once per value, not every progress write
                run.extra["refused_save_dir"] = save_dir
                self.event(job.name, "refused", f"run directory {str(save_dir)[:200]!r} reported by the "
                           f"child is outside {project}; ignored")
            return
        if str(inside) != job.run_dir:
            self.store.update_job(job.name, run_dir=str(inside))

    def _note_child_lines(self, name: str, run: Running, progress: Progress) -> None:
        """The child's one-line notes (an epoch-level fallback, an inexact resume) go to the history once,
        at most ``NOTES_PER_ATTEMPT`` of them: the child's user writes the file, and a flood of notes
        must not become a flood of events. The rest are counted, in one event when the attempt ends."""
        notes = [line for line in progress.notes if isinstance(line, str)]
        fresh = notes[run.extra.get("notes_seen", 0):]
        recorded = run.extra.get("notes_recorded", 0)
        kept = fresh[:max(0, NOTES_PER_ATTEMPT - recorded)]
        for line in kept:
            self.event(name, "checkpoint", f"attempt {run.attempt_no}: {line[:NOTE_CHARS]}")
        run.extra["notes_recorded"] = recorded + len(kept)
        run.extra["notes_dropped"] = run.extra.get("notes_dropped", 0) + len(fresh) - len(kept)
        run.extra["notes_seen"] = len(notes)
        dropped = run.extra["notes_dropped"]
        if name in self.ending and dropped and not run.extra.get("notes_dropped_told"):
            self.event(name, "checkpoint", f"attempt {run.attempt_no}: {dropped} more note(s) from the child "
                       f"not recorded (at most {NOTES_PER_ATTEMPT} an attempt)", dropped=dropped)
            run.extra["notes_dropped_told"] = True

    def _snapshot(self, name: str, job: Optional[JobRecord] = None) -> None:
        """Copy a newly saved last.pt or mid-epoch state into the vault once it verifies (on a
        worker: a copy and CRC check of hundreds of MB); one snapshot of a job at a time."""
        job = job or self.store.get_job(name)
        if not job.run_dir or self._snapshot_retry_at.get(name, 0) > time.monotonic():
            return
        try:
            spec = self.spec_of(job)
        except SpecError:
            return  # keep_checkpoints unknown: the attempt's end fails the job with the reason
        task = functools.partial(jobwork.snapshots, self.job_work(job, spec))
        self.workers.submit(("job", name), task, jobwork.SNAPSHOT_DEADLINE_S,
                            functools.partial(self._snapshots_taken, name))

    def _snapshots_taken(self, name: str, outcome: Outcome) -> None:
        if not outcome.ok:  # a full disk: the run goes on; the copy is tried again later
            self._snapshot_retry_at[name] = time.monotonic() + STEP_RETRY_S
            self.log.error("could not keep a verified copy of a checkpoint", job=name,
                           error=outcome.problem(jobwork.SNAPSHOT_DEADLINE_S), retry_in_s=STEP_RETRY_S)
        else:
            self._note_snapshots(name, outcome.value)
        if name in self.ending:  # the attempt ended while its snapshot ran: gather its end now
            self._guarded(self._end_attempt, name)

    def _note_snapshots(self, name: str, kept: list) -> None:
        """The copies a worker kept go to the history, and the epochs they hold to the job."""
        job = self.store.get_job(name)
        for info in kept:
            if job is None:
                return
            if info.epochs_done > (job.epochs_done or 0):
                self.store.update_job(name, epochs_done=info.epochs_done)
                job = self.store.get_job(name)
            self.event(name, "snapshot", f"verified copy of {info.where()} kept", epoch=info.epochs_done,
                       batch=info.position[1] or None)

    # -- commands (control handlers parse the request and render the job; these act) ----------
    def stop_job(self, name: str, actor: str) -> None:
        """TERM, grace, KILL for a running job; a job that waits to start is stopped at once."""
        job = self.store.get_job(name)
        state, reason = S(job.state), f"stop requested by {actor}"
        run = self.running.get(name)
        if run is not None and state is S.STOPPING:
            run.user_stop, run.then = True, None  # already ending (stall, restart): stay stopped after
            self.note_stop_intent(run)
            self.event(name, "stop", f"{reason} while already stopping", actor)
        elif run is not None:
            self.terminate(name, On.STOP_REQUESTED, Cause.STOPPED, reason, self._stop_grace(name), actor,
                           user_stop=True)
        elif state in (S.QUEUED, S.BACKOFF, S.HELD):
            self.transition(name, On.STOP_REQUESTED, reason, actor, next_start_at=None)
        else:
            raise _wrong_state(job, "stop")

    def remove_job(self, name: str, purge: bool, actor: str) -> Future:
        """Forget a job that has no process; with ``purge`` its folder goes first (on a worker), so
        a failed purge keeps the job (and says what could not be deleted). The future is done (or
        raises PurgeFailed) once the job is gone: wait for it off the loop."""
        job = self.store.get_job(name)
        if name in self.running or name in self.launching or S(job.state).has_process:
            raise _wrong_state(job, "remove")
        tracker_runs.finalize(self, name, "removed")  # before the files go: it reads the last progress
        answer: Future = Future()
        if not purge:
            self._forget(name, actor, purge)
            answer.set_result(None)
            return answer

        def purged(outcome: Outcome) -> None:
            failed = outcome.value if outcome.ok else [outcome.problem(jobwork.PURGE_DEADLINE_S)]
            if failed:
                more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
                answer.set_exception(PurgeFailed(f"{name}: could not delete {failed[0]}{more}; the job is kept "
                                                 "(remove again once fixed)"))
            elif self.store.get_job(name) is None:
                answer.set_result(None)
            else:
                self._forget(name, actor, purge)
                answer.set_result(None)
        task = functools.partial(jobwork.purge, self.home.job_dir(name))
        if not self.workers.submit(("purge", name), task, jobwork.PURGE_DEADLINE_S, purged):
            raise CommandError(f"{name}: busy (its files are being looked at or removed); try again shortly")
        return answer

    def _forget(self, name: str, actor: str, purged: bool) -> None:
        self.store.remove_job(name)
        self._run_uids.pop(name, None)
        _SPECS.forget(name)
        self.health.forget(name)
        self.log.info("removed", job=name, actor=actor, purged=purged)

    def start_job(self, name: str, actor: str) -> None:
        """Queue a stopped, failed or held job again; launch() resumes it from its checkpoint."""
        job = self.store.get_job(name)
        if S(job.state) not in (S.STOPPED, S.FAILED, S.HELD):
            raise _wrong_state(job, "start")
        self._requeue(name, On.START_REQUESTED, f"start requested by {actor}", actor)

    def restart_job(self, name: str, actor: str) -> None:
        """Stop the running attempt and start a new one that resumes; start a job that is not running."""
        job = self.store.get_job(name)
        state, reason = S(job.state), f"restart requested by {actor}"
        if name in self.running and state is not S.STOPPING:
            self.terminate(name, On.RESTART_REQUESTED, Cause.STOPPED, reason, self._stop_grace(name), actor,
                           user_stop=True, then="restart")
        elif state is S.BACKOFF:  # skip the rest of the delay, but wait for a slot like any other start
            self.transition(name, On.RESTART_REQUESTED, reason, actor, next_start_at=time.time())
            self.event(name, "restart", f"{reason}: starts as soon as a slot is free", actor)
            self.start_due_jobs()
        elif state in (S.STOPPED, S.FAILED, S.HELD):
            self._requeue(name, On.RESTART_REQUESTED, reason, actor)
        else:
            raise _wrong_state(job, "restart")

    def drill_job(self, name: str, kind: str, actor: str) -> str:
        """Inject one real fault into the running training (``drill``): the daemon signals ``kill``
        and ``term`` itself; the child takes the others from a request file at its next step."""
        job = self.store.get_job(name)
        run = self.running.get(name)
        if run is None or S(job.state) not in (S.STARTING, S.RUNNING):
            raise _wrong_state(job, f"drill {kind} in")
        if kind in drill.SIGNAL_KINDS:
            sig = signal.SIGKILL if kind == "kill" else signal.SIGTERM
            pids = self.executor.signal_job(name, run.child, sig)
            what = f"drill {kind}: {signal.Signals(sig).name} to {len(pids)} process(es)"
        else:
            with self.as_owner(name):  # the job's folder is its user's
                drill.request(drill.request_path(self.home.job_exit_record(name)), kind, actor)
            what = f"drill {kind}: asked of the training, at its next step"
        self.event(name, "drill", what, actor, fault=kind, attempt=run.attempt_no)
        return what

    def _stop_grace(self, name: str) -> float:
        """The job's TERM-to-KILL grace; the default when its stored spec no longer validates."""
        try:
            return self.spec(name).health.stop_grace
        except SpecError:
            return Health().stop_grace

    def _requeue(self, name: str, on: On, reason: str, actor: str) -> None:
        """A user's start gives the job a fresh restart budget."""
        if self.workers.busy(("purge", name)):
            raise CommandError(f"{name}: busy (its files are being looked at or removed); try again shortly")
        self.transition(name, on, reason, actor, crash_restarts=0, no_progress_streak=0,
                        backoff_level=0, next_start_at=None, setup_failures=0, preempt_streak=0)
        self.start_due_jobs()

    # -- stopping -------------------------------------------------------------
    def terminate(self, name: str, on: On, cause: Cause, reason: str, grace: float, actor: Optional[str] = None,
                  user_stop: bool = False, then: Optional[str] = None) -> None:
        """TERM every process of the job now (the table's action on ``on``); KILL what is left after
        ``grace`` seconds."""
        run = self.running[name]
        run.kill_cause, run.user_stop, run.then = cause, user_stop, then
        run.kill_at = time.monotonic() + grace
        self.note_stop_intent(run)  # before the TERM: a daemon restart right after must not forget it
        self.transition(name, on, reason, actor, grace=grace)

    def _send_term(self, name: str, run: Running, grace: float, actor: Optional[str] = None) -> None:
        """SIGTERM to every process of the job, on a worker (a /proc scan)."""
        task = functools.partial(self.executor.signal_job, name, run.child, signal.SIGTERM)

        def sent(outcome: Outcome) -> None:
            pids = outcome.value if outcome.ok else []
            self.event(name, "signal", f"SIGTERM to {len(pids)} process(es); SIGKILL after {grace:g}s",
                       actor, pids=pids)
        if not self.workers.submit(("signal", name, run.attempt_id), task, jobwork.KILL_DEADLINE_S, sent):
            run.kill_at = time.monotonic()  # the last TERM still under way: the KILL comes at once

    def note_stop_intent(self, run: Running) -> None:
        """Persist why and by when the attempt is being ended; ``reconcile`` restores it."""
        left = None if run.kill_at is None else max(0.0, run.kill_at - time.monotonic())
        self.store.set_stop_intent(run.attempt_id, cause=run.kill_cause.value if run.kill_cause else None,
                                   detail=run.extra.get("stall_reason"), by_user=run.user_stop, then=run.then,
                                   kill_at=None if left is None else time.time() + left)

    def _escalate_kill(self, name: str, run: Running) -> None:
        """SIGKILL and the wait for it to land run on a worker; the exit comes back as the pidfd."""
        task = functools.partial(self.executor.kill_job_now, name, run.child)

        def killed(outcome: Outcome) -> None:
            survivors = outcome.value if outcome.ok else outcome.problem(jobwork.KILL_DEADLINE_S)
            self.event(name, "signal", "grace period over: SIGKILL to every process of the job",
                       survivors=survivors)
        if self.workers.submit(("kill", name, run.attempt_id), task, jobwork.KILL_DEADLINE_S, killed):
            run.kill_at = None

    # -- reconciliation after a daemon restart ------------------------------------
    def reconcile(self) -> None:
        """Re-adopt live attempts; treat vanished ones as ended and let the policy decide."""
        for job in self.store.list_jobs():
            if not S(job.state).has_process or job.name in self.running or job.name in self.ending:
                continue
            self._guarded(self._reconcile_job, job.name)  # at start too: one job never ends the daemon

    def _reconcile_job(self, name: str) -> None:
        job = self.store.get_job(name)
        self._note_run_uid(job)
        open_attempt = self.store.open_attempt(name)
        child = self.executor.adopt(job, open_attempt)
        if open_attempt is None:
            if child is not None:
                child.close()
            self.transition(name, On.NO_OPEN_ATTEMPT, "no open attempt found on daemon start")
            return
        run = Running(child or _dead_child(job), open_attempt.id, open_attempt.number,
                      open_attempt.epochs_before, log_offset=0)
        _restore_stop_intent(run, open_attempt)
        if child is not None:
            self.event(name, "adopted", f"re-adopted attempt {run.attempt_no} "
                       f"({self.executor.describe(job, open_attempt)})")
            if run.kill_at is not None:  # the last daemon may have died between the stop's record and its TERM
                self._send_term(name, run, max(0.0, run.kill_at - time.monotonic()))
        else:
            self.event(name, "vanished", f"attempt {run.attempt_no} ({self.executor.describe(job, open_attempt)}) "
                       "ended while the daemon was down")
        self._watch(name, run)


class _SpecCache:
    """Each job's parsed spec (or why it does not validate), parsed once per stored text.

    One entry per job name, replaced when the job's text changes (an edit) and dropped when the job
    is removed: a cache of a fixed size thrashed once the queue outgrew it (500 queued jobs parsed
    500 YAML texts every tick: a whole core)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, Union[JobSpec, SpecError]]] = {}

    def parse(self, spec_yaml: str, name: str) -> JobSpec:
        hit = self._entries.get(name)
        if hit is None or hit[0] != spec_yaml:
            try:
                result: Union[JobSpec, SpecError] = parse_spec_text(spec_yaml, name)
            except SpecError as err:
                result = err
            hit = self._entries[name] = (spec_yaml, result)
        if isinstance(hit[1], SpecError):
            raise hit[1]
        return hit[1]

    def forget(self, name: str) -> None:
        self._entries.pop(name, None)


_SPECS = _SpecCache()


def _parsed_spec(spec_yaml: str, name: str) -> JobSpec:
    """Specs are immutable once stored; parse each one once, not on every tick."""
    return _SPECS.parse(spec_yaml, name)


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


def _spec_from(data: dict[str, Any]) -> JobSpec:
    from supervisor.jobs.spec import parse_spec

    return parse_spec(data, data.get("name", "<spec>"))


def _name_taken(held: JobRecord, submitter: Optional[tuple[int, int]]) -> str:
    """A name is one job's until its owner (or an admin) removes it; say whose it is."""
    if submitter is not None and held.owner_uid is not None and held.owner_uid != submitter[0]:
        return (f"name: '{held.name}' is taken by a job of {actor_for_uid(held.owner_uid)}; only its owner or an "
                "admin can remove it: submit under another name")
    return (f"name: a job named '{held.name}' already exists (change it with `yolo-supervisorctl edit "
            f"{held.name} KEY=VALUE`, train it longer with `extend`, or submit under another name)")


def _wrong_state(job: JobRecord, what: str) -> CommandError:
    return CommandError(f"{job.name}: cannot {what} a job that is {job.state}")


def _dead_child(job: JobRecord) -> launcher.Child:
    """A stand-in for an attempt that ended while no daemon watched: a pidfd that is readable at once."""
    r, w = os.pipe()
    os.close(w)  # EOF: the selector reports it readable immediately
    return launcher.Child(job=job.name, pid=job.pid or 0, start_time=job.pid_start_time or 0, pidfd=r)
