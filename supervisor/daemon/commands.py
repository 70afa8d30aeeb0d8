"""What users ask of the daemon: submit a job, and stop, start, restart, remove, drill, edit or extend one.

Each runs on the loop thread (the control handlers parse the request, call one of these through
``Daemon.call`` and render the job); a request that cannot be done raises ``CommandError`` with a
message for the user, and changes nothing.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from supervisor import safefs
from supervisor.child import drill
from supervisor.control.peer import actor_for_uid
from supervisor.daemon import jobwork, specs
from supervisor.daemon import trackers as tracker_runs
from supervisor.daemon.resume import choose
from supervisor.daemon.running import Running
from supervisor.daemon.workers import Outcome
from supervisor.jobs.edit import Edit, plan_edit
from supervisor.jobs.machine import On
from supervisor.jobs.spec import Health, JobSpec, SpecError, parse_spec_text, spec_to_yaml
from supervisor.jobs.states import Cause, JobState
from supervisor.observe.notify import job_target_problems
from supervisor.placement import Request, impossible
from supervisor.probes.vault import CheckpointVault

if TYPE_CHECKING:
    from supervisor.daemon.attempts import Attempts
    from supervisor.daemon.config import DaemonConfig
    from supervisor.daemon.health import DeviceHealth
    from supervisor.daemon.launches import Launches
    from supervisor.daemon.scheduling import GpuScheduling
    from supervisor.daemon.workers import Workers
    from supervisor.store import JobRecord

S = JobState


class CommandError(Exception):
    """A control request that cannot be done (unknown job, wrong state); the message is for the user."""


class PurgeFailed(CommandError):
    """``remove --purge`` could not delete everything: the job is kept, the message says what is left."""


class CommandsHost(tracker_runs.TrackerHost, Protocol):
    """What the commands use of the daemon: named here so this module needs nothing from core.py."""

    config: "DaemonConfig"
    health: "DeviceHealth"
    workers: "Workers"
    executor: Any
    running: dict[str, Running]
    attempts: "Attempts"
    launches: "Launches"
    scheduling: "GpuScheduling"

    def transition(self, name: str, on: On, reason: str, actor: Optional[str] = None, *,
                   grace: float = 0.0, **fields: Any) -> None: ...
    def as_owner(self, name: str) -> Any: ...
    def forget_run_uid(self, name: str) -> None: ...


class Commands:
    """The user's requests, acted on; the handlers only parse and render."""

    def __init__(self, host: CommandsHost):
        self.host = host

    # -- submitting ----------------------------------------------------------
    def submit(self, text: str, source: str, actor: Optional[str] = None,
               owner: Optional[tuple[int, int]] = None,
               on_accept: Optional[Callable[[], Any]] = None) -> JobSpec:
        """Validate and queue a job. ``on_accept`` runs once the spec is valid, inside the
        transaction that adds the job, so it happens before anyone sees the job (the drop
        directory moves the file to accepted/ there) and an exception from it adds nothing."""
        host = self.host
        spec = parse_spec_text(text, source)
        request = Request(job=spec.name, pinned=tuple(spec.gpu_indices), count=spec.gpus or 0)
        problem = impossible(request, host.scheduling.gpu_inventory()) if host.executor.places_gpus else None
        if problem:
            field = "gpus" if spec.gpus else "train.device"
            raise SpecError(source, [f"{field}: {problem.removeprefix('waiting: ')} (the daemon's GPUs: every GPU "
                                     "NVML sees, or the `gpus` list in its config.yaml)"])
        held = host.store.get_job(spec.name)
        if held is not None:
            raise SpecError(source, [_name_taken(held, owner)])
        if spec.notify is not None:  # the admin's own targets (config.yaml) are not restricted
            problems = job_target_problems(spec.notify.urls, host.config.notify.allow_hosts, resolve=False)
            if problems:
                raise SpecError(source, problems)
        uid, gid = _owner_ids(owner, source)
        archived = self._archive_leftovers(spec.name, actor)
        host.home.ensure_job(spec.name)
        with host.store.transaction():  # StoreError (a full disk): no job, and on_accept is undone by its caller
            host.store.add_job(spec.name, spec_to_yaml(spec), S.QUEUED.value, source=source,
                               owner_uid=uid, owner_gid=gid)
            host.store.add_event(spec.name, "submitted", f"from {source}", to_state=S.QUEUED.value,
                                 actor=actor)
            if archived is not None:
                host.store.add_event(spec.name, "submitted", f"files of an earlier job named {spec.name} were "
                                     f"moved to {archived}; this job starts from nothing of theirs", actor=actor)
            if on_accept is not None:
                on_accept()
        host.log.info("submitted", job=spec.name, source=source, actor=actor)
        return spec

    def _archive_leftovers(self, name: str, actor: Optional[str]) -> Optional[Path]:
        """A removed job's files (``remove`` without ``--purge``) must never become a new job's
        checkpoints, vault, results or progress: they move to jobs/.removed/ before the new job exists."""
        home = self.host.home
        old = home.job_dir(name)
        if not os.path.lexists(old):
            return None
        archive = home.root / "jobs" / ".removed"
        archive.mkdir(exist_ok=True)
        target = archive / f"{name}.{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while os.path.lexists(target):
            target, n = archive / f"{name}.{time.strftime('%Y%m%d-%H%M%S')}.{n}", n + 1
        os.rename(old, target)  # renames the entry itself: a link is moved, never followed
        self.host.log.info("archived the files of an earlier job", job=name, to=str(target), actor=actor)
        return target

    # -- stop, remove, start, restart, drill ------------------------------------
    def stop_job(self, name: str, actor: str) -> None:
        """TERM, grace, KILL for a running job; a job that waits to start is stopped at once."""
        host = self.host
        job = host.store.get_job(name)
        state, reason = S(job.state), f"stop requested by {actor}"
        run = host.running.get(name)
        if run is not None and state is S.STOPPING:
            run.user_stop, run.then = True, None  # already ending (stall, restart): stay stopped after
            host.attempts.note_stop_intent(run)
            host.event(name, "stop", f"{reason} while already stopping", actor)
        elif run is not None:
            host.attempts.terminate(name, On.STOP_REQUESTED, Cause.STOPPED, reason, self._stop_grace(job), actor,
                                    user_stop=True)
        elif state in (S.QUEUED, S.BACKOFF, S.HELD):
            host.transition(name, On.STOP_REQUESTED, reason, actor, next_start_at=None)
        else:
            raise _wrong_state(job, "stop")

    def remove_job(self, name: str, purge: bool, actor: str) -> Future:
        """Forget a job that has no process; with ``purge`` its folder goes first (on a worker), so
        a failed purge keeps the job (and says what could not be deleted). The future is done (or
        raises PurgeFailed) once the job is gone: wait for it off the loop."""
        host = self.host
        job = host.store.get_job(name)
        if name in host.running or name in host.launches.launching or S(job.state).has_process:
            raise _wrong_state(job, "remove")
        tracker_runs.finalize(host, name, "removed")  # before the files go: it reads the last progress
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
            elif host.store.get_job(name) is None:
                answer.set_result(None)
            else:
                self._forget(name, actor, purge)
                answer.set_result(None)
        task = functools.partial(jobwork.purge, host.home.job_dir(name))
        if not host.workers.submit(("purge", name), task, jobwork.PURGE_DEADLINE_S, purged):
            raise CommandError(f"{name}: busy (its files are being looked at or removed); try again shortly")
        return answer

    def _forget(self, name: str, actor: str, purged: bool) -> None:
        host = self.host
        host.store.remove_job(name)
        host.forget_run_uid(name)
        specs.forget(name)
        host.health.forget(name)
        host.log.info("removed", job=name, actor=actor, purged=purged)

    def start_job(self, name: str, actor: str) -> None:
        """Queue a stopped, failed or held job again; the launch resumes it from its checkpoint."""
        job = self.host.store.get_job(name)
        if S(job.state) not in (S.STOPPED, S.FAILED, S.HELD):
            raise _wrong_state(job, "start")
        self._requeue(name, On.START_REQUESTED, f"start requested by {actor}", actor)

    def restart_job(self, name: str, actor: str) -> None:
        """Stop the running attempt and start a new one that resumes; start a job that is not running."""
        host = self.host
        job = host.store.get_job(name)
        state, reason = S(job.state), f"restart requested by {actor}"
        if name in host.running and state is not S.STOPPING:
            host.attempts.terminate(name, On.RESTART_REQUESTED, Cause.STOPPED, reason, self._stop_grace(job), actor,
                                    user_stop=True, then="restart")
        elif state is S.BACKOFF:  # skip the rest of the delay, but wait for a slot like any other start
            host.transition(name, On.RESTART_REQUESTED, reason, actor, next_start_at=time.time())
            host.event(name, "restart", f"{reason}: starts as soon as a slot is free", actor)
            host.scheduling.start_due_jobs()
        elif state in (S.STOPPED, S.FAILED, S.HELD):
            self._requeue(name, On.RESTART_REQUESTED, reason, actor)
        else:
            raise _wrong_state(job, "restart")

    def drill_job(self, name: str, kind: str, actor: str) -> str:
        """Inject one real fault into the running training (``drill``): the daemon signals ``kill``
        and ``term`` itself; the child takes the others from a request file at its next step."""
        host = self.host
        job = host.store.get_job(name)
        run = host.running.get(name)
        if run is None or S(job.state) not in (S.STARTING, S.RUNNING):
            raise _wrong_state(job, f"drill {kind} in")
        if kind in drill.SIGNAL_KINDS:
            sig = signal.SIGKILL if kind == "kill" else signal.SIGTERM
            pids = host.executor.signal_job(name, run.child, sig)
            what = f"drill {kind}: {signal.Signals(sig).name} to {len(pids)} process(es)"
        else:
            with host.as_owner(name):  # the job's folder is its user's
                drill.request(drill.request_path(host.home.job_exit_record(name)), kind, actor)
            what = f"drill {kind}: asked of the training, at its next step"
        host.event(name, "drill", what, actor, fault=kind, attempt=run.attempt_no)
        return what

    def _stop_grace(self, job: "JobRecord") -> float:
        """The job's TERM-to-KILL grace; the default when its stored spec no longer validates."""
        try:
            return specs.spec_of(job).health.stop_grace
        except SpecError:
            return Health().stop_grace

    def _requeue(self, name: str, on: On, reason: str, actor: str) -> None:
        """A user's start gives the job a fresh restart budget."""
        host = self.host
        if host.workers.busy(("purge", name)):
            raise CommandError(f"{name}: busy (its files are being looked at or removed); try again shortly")
        host.transition(name, on, reason, actor, crash_restarts=0, no_progress_streak=0,
                        backoff_level=0, next_start_at=None, setup_failures=0, preempt_streak=0)
        host.scheduling.start_due_jobs()

    # -- changing a job ---------------------------------------------------------
    def edit(self, name: str, values: dict[str, Any], force: bool, actor: Optional[str]) -> Edit:
        """Change train arguments of a job that has no process; they apply from its next resume.

        Raises CommandError (wrong state) or EditRefused (a key that cannot change, and why)."""
        host = self.host
        job = host.store.get_job(name)
        if name in host.running or S(job.state).has_process:
            raise CommandError(f"{name}: cannot edit a job that is {job.state}: stop it first")
        change = plan_edit(specs.spec_of(job), values, force)
        with host.store.transaction():
            host.store.update_job(name, spec_yaml=spec_to_yaml(change.spec))
            if "device" in change.changes:
                host.store.update_job(name, devices=None)  # the edited device, not the recorded set
            for key, (old, new) in change.changes.items():
                host.event(name, "edit", f"{key}: {old!r} -> {new!r}", actor, key=key, old=old, new=new)
            for warning in change.warnings:
                host.event(name, "edit", f"warning: {warning}", actor)
        if name in host.launches.preflight_holds:
            host.launches.preflight_holds[name] = 0.0  # a held job is looked at again on the next tick
        return change

    def extend(self, name: str, epochs: int, actor: Optional[str]) -> JobSpec:
        """Train a completed, stopped or failed job on to ``epochs`` in all, from its last resumable state."""
        host = self.host
        job = host.store.get_job(name)
        spec = specs.spec_of(job)
        if name in host.running or S(job.state) not in (S.COMPLETED, S.STOPPED, S.FAILED):
            raise CommandError(f"{name}: cannot extend a job that is {job.state}: it must be completed, "
                               "stopped or failed")
        done = max(job.epochs_done or 0, spec.epochs if job.state == S.COMPLETED.value else 0)
        if epochs <= done:
            raise CommandError(f"{name}: --epochs {epochs} is not more than the {done} epochs already trained")
        run_dir = Path(job.run_dir) if job.run_dir else None
        with host.as_owner(name):  # the run directory is the job user's: read it as them
            vault = CheckpointVault(host.home.job_vault(name), keep=spec.keep_checkpoints)
            resumable = choose(run_dir, vault, extended=True).state
        if resumable is None:
            raise CommandError(f"{name}: no resumable state is kept (the final last.pt is stripped and the "
                               "vault holds no copy): it cannot be trained further")
        data = spec.model_dump(mode="json")
        data["train"]["epochs"] = epochs
        new_spec = specs.spec_from(data)
        with host.store.transaction():
            host.store.update_job(name, spec_yaml=spec_to_yaml(new_spec), extend_pending=1)
            host.event(name, "edit", f"epochs: {spec.epochs} -> {epochs} (extend; the learning-rate schedule "
                       f"is rebuilt for {epochs} epochs)", actor, key="epochs", old=spec.epochs, new=epochs)
            host.transition(name, On.EXTENDED, f"extended to {epochs} epochs by {actor}", actor, crash_restarts=0,
                            no_progress_streak=0, backoff_level=0, next_start_at=None, setup_failures=0,
                            preempt_streak=0)
        host.scheduling.start_due_jobs()
        return new_spec


def _owner_ids(owner: Optional[tuple[int, int]], source: str) -> tuple[Optional[int], Optional[int]]:
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


def _name_taken(held: "JobRecord", submitter: Optional[tuple[int, int]]) -> str:
    """A name is one job's until its owner (or an admin) removes it; say whose it is."""
    if submitter is not None and held.owner_uid is not None and held.owner_uid != submitter[0]:
        return (f"name: '{held.name}' is taken by a job of {actor_for_uid(held.owner_uid)}; only its owner or an "
                "admin can remove it: submit under another name")
    return (f"name: a job named '{held.name}' already exists (change it with `yolo-supervisorctl edit "
            f"{held.name} KEY=VALUE`, train it longer with `extend`, or submit under another name)")


def _wrong_state(job: "JobRecord", what: str) -> CommandError:
    return CommandError(f"{job.name}: cannot {what} a job that is {job.state}")
