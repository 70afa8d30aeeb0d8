"""The daemon's part in one tracker run per job: keep the ids, hand them to each attempt, close the run.

The record (supervisor/jobs/trackers.py: TrackerRecord) lives in the job's row of the store. The
daemon never imports a tracker library nor contacts a tracker: closing the MLflow run when the job
ends is a short process (``python -m supervisor.child.trackers finalize``) started as the job's
owner with the job's environment, off the loop (a thread reaps it).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from supervisor import safefs
from supervisor.contract import Progress, from_json, read_json
from supervisor.jobs.trackers import (FINAL_STATUS, MAX_OWNER_SETTINGS_BYTES, TrackerRecord, attempt_cause,
                                      finalize_argv, owner_settings_path, parse_owner_settings)
from supervisor.process import jobenv, launcher
from supervisor.process.jobenv import EnvFileError

if TYPE_CHECKING:
    from supervisor.daemon.jobwork import JobWork
    from supervisor.jobs.spec import JobSpec
    from supervisor.paths import Home
    from supervisor.process.jobenv import JobEnvironment
    from supervisor.store import JobRecord, Store

FINALIZE_TIMEOUT_S = 120.0


class TrackerHost(Protocol):
    """What these steps use of the daemon: named here so this module needs nothing from core.py."""

    home: "Home"
    store: "Store"
    log: Any

    def spec(self, name: str) -> "JobSpec": ...
    def job_identity(self, job: "JobRecord") -> Optional[safefs.Identity]: ...
    def job_environment(self, job: "JobRecord", spec: "JobSpec") -> "JobEnvironment": ...
    def event(self, name: str, kind: str, reason: str, actor: Optional[str] = None, **data: Any) -> None: ...
    def post(self, fn: Callable[[], Any]) -> Future: ...


def record(daemon: TrackerHost, name: str) -> TrackerRecord:
    job = daemon.store.get_job(name)
    return TrackerRecord.load(job.trackers if job is not None else None)


def plan_for_attempt(daemon: TrackerHost, work: "JobWork", attempt: int, devices: Optional[str]) -> dict[str, Any]:
    """The plan's ``trackers``: the job's ids (chosen now at the first attempt), every attempt and
    its cause, and the Ultralytics settings (the owner's, then the job's ``settings:``).

    Runs before the previous attempt's progress file is removed: ids that attempt reported and
    the daemon had not read yet (it was killed moments after opening its run) are kept."""
    job, spec = work.job, work.spec
    assert spec is not None
    rec = TrackerRecord.load(job.trackers)
    take_reported(daemon, job.name, rec, from_json(Progress, read_json(daemon.home.job_progress(job.name))))
    rec.choose_first_ids()
    previous = daemon.store.attempts(job.name)[-1:] or [None]
    last = previous[0]
    extend_to = spec.epochs if "epochs" in work.edited else None
    # Why the previous attempt ended: the daemon's own reason when it ended it (a user's stop, a
    # stall), else what its exit was classified as.
    cause = last and (last.stop_cause or last.cause)
    detail = last and (last.stop_detail or last.detail)
    rec.note_attempt(attempt, attempt_cause(attempt, cause, detail, extend_to, devices, job.devices))
    rec.finalized = None  # running again: the runs are open
    daemon.store.update_job(job.name, trackers=rec.dump())
    return rec.plan(owner_settings(work.identity), spec.settings or {})


def owner_settings(identity: Optional[safefs.Identity]) -> dict[str, Any]:
    """The owner's own ``yolo settings`` (read as the owner); {} when they have none."""
    uid = identity.uid if identity is not None else os.geteuid()
    try:
        home = pwd.getpwuid(uid).pw_dir
    except KeyError:
        return {}
    try:
        with safefs.as_user(identity):
            data = safefs.read_regular(owner_settings_path(home), MAX_OWNER_SETTINGS_BYTES + 1)
    except (OSError, safefs.UnsafePath):
        return {}
    return parse_owner_settings(data) if len(data) <= MAX_OWNER_SETTINGS_BYTES else {}


def take_reported(daemon: TrackerHost, name: str, rec: Optional[TrackerRecord], progress: Optional[Progress]) -> None:
    """Keep the runs a child reported; the first time a tracker's run is known, say where it is."""
    if progress is None or not progress.trackers:
        return
    rec = rec if rec is not None else record(daemon, name)
    learned = rec.take_reported(progress.trackers)
    if learned:
        daemon.store.update_job(name, trackers=rec.dump())
        runs = rec.runs()
        daemon.event(name, "trackers", "; ".join(rec.describe(t) for t in learned), runs=runs)


def finalize(daemon: TrackerHost, name: str, outcome: str) -> None:
    """Close the job's runs with its outcome (completed, failed, stopped, removed), once per outcome.
    Never raises: the job's own change of state is what matters."""
    try:
        _finalize(daemon, name, outcome)
    except Exception as exc:  # noqa: BLE001 - logged; the tracker shows the run as it was left
        daemon.log.warning("trackers", job=name, reason=f"closing the tracker runs failed: {exc!r}")


def _finalize(daemon: TrackerHost, name: str, outcome: str) -> None:
    status = FINAL_STATUS[outcome]
    job = daemon.store.get_job(name)
    if job is None:
        return
    rec = TrackerRecord.load(job.trackers)
    # The last attempt may have opened its run moments before it ended, unseen by a tick.
    take_reported(daemon, name, rec, from_json(Progress, read_json(daemon.home.job_progress(name))))
    argv = finalize_argv(launcher.child_python(), status, rec.ids)
    if argv is None or rec.finalized == status or (outcome == "removed" and rec.finalized):
        return  # closed already (a removed job keeps the outcome it ended with)
    try:
        spec = daemon.spec(name)
        environment = daemon.job_environment(job, spec)
    except (EnvFileError, ValueError) as err:  # SpecError too
        daemon.event(name, "trackers", f"cannot close the tracker runs ({status}): {err}")
        return
    identity = daemon.job_identity(job)
    run_as = identity.uid if safefs.needs_switch(identity) and identity is not None else None
    env = jobenv.build(os.environ, run_as, launcher.child_python(), environment,
                       {"PYTHONUNBUFFERED": "1", "YOLO_OFFLINE": "1"})
    kwargs: dict[str, Any] = {}
    if run_as is not None:
        kwargs.update(user=identity.uid, group=identity.gid, extra_groups=list(identity.groups))
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, cwd="/", start_new_session=True, close_fds=True, **kwargs)
    except OSError as err:
        daemon.event(name, "trackers", f"cannot close the tracker runs ({status}): {err}")
        return
    rec.finalized = status
    daemon.store.update_job(name, trackers=rec.dump())
    # Waited for on a thread: the loop never waits on a tracker; the result comes back as an event.
    threading.Thread(target=_reap, args=(daemon, name, proc, status), daemon=True,
                     name=f"trackers-finalize-{name}").start()


def _reap(daemon: TrackerHost, name: str, proc: subprocess.Popen, status: str) -> None:
    try:
        out, _ = proc.communicate(timeout=FINALIZE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    text = (out or b"").decode("utf-8", errors="replace").strip().splitlines()
    ok = proc.returncode == 0
    reason = f"tracker runs closed {status}" if ok else \
        f"closing the tracker runs ({status}) failed (exit {proc.returncode}): {(text or [''])[-1][:300]}"

    def note() -> None:
        if daemon.store.get_job(name) is not None:
            daemon.event(name, "trackers", reason)
        else:  # removed meanwhile: its events went with it
            daemon.log.info("trackers", job=name, reason=reason)
    try:
        daemon.post(note)
    except Exception:  # noqa: BLE001 - the daemon is stopping: the run's state is the tracker's to show
        pass
