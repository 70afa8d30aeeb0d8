"""What the workers do for one job: the blocking half of a launch, snapshots, an ended attempt's facts.

Every function here runs on a worker thread (supervisor/daemon/workers.py), never on the loop,
and touches neither the store nor the daemon's runtime state: it gets a plain value with what it
needs (``JobWork``), acts on files, processes and commands, and returns what it found. The loop
records it. File operations in a job's folders run as the job's user (``safefs.as_user`` is per
thread, so a worker can do that while the loop stays root).
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from supervisor import safefs
from supervisor.child import drill
from supervisor.contract import ExitRecord, Plan, from_json, read_json, to_json, write_json_atomic
from supervisor.daemon import preflight
from supervisor.daemon.resume import (best_verified, checkpoint_mismatch, choose, final_resumable_pt, last_pt,
                                      midepoch_pt, prepare_resume)
from supervisor.jobs.edit import RESUME_OVERRIDABLE
from supervisor.jobs.spec import JobSpec
from supervisor.paths import Home
from supervisor.probes.checkpoint import CheckpointInfo
from supervisor.probes.vault import CheckpointVault
from supervisor.process import jobenv, launcher
from supervisor.process.classify import kernel_oom_killed, read_log_tail
from supervisor.store import JobRecord

LAUNCH_DEADLINE_S = 300.0    # preflight (10 s), checkpoint checks, a vault restore of a large file, sbatch
SNAPSHOT_DEADLINE_S = 300.0  # a copy and CRC check of a checkpoint of hundreds of MB
KILL_DEADLINE_S = 30.0       # a /proc scan and the 5 s wait for a SIGKILL to land (scancel: its timeout)
PURGE_DEADLINE_S = 600.0


@dataclass(frozen=True)
class JobWork:
    """Everything a worker (and each step of a launch) needs about one job, loaded once by the loop
    beforehand: the record, the parsed spec, the owner's identity, the edited keys (no store access here)."""

    job: JobRecord
    spec: Optional[JobSpec]            # None: the stored spec no longer validates
    home: Home
    identity: Optional[safefs.Identity]  # who the job's files are touched as; None: the daemon's user
    edited: frozenset[str] = frozenset()  # train keys changed by `edit` (the checkpoint may differ there)
    pass_env: tuple[str, ...] = ()        # config.yaml's pass_env

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def uid(self) -> int:
        """The uid the job's processes run as: its owner's, or the daemon's own without an identity."""
        return self.identity.uid if self.identity is not None else os.geteuid()

    @property
    def run_dir(self) -> Optional[Path]:
        return Path(self.job.run_dir) if self.job.run_dir else None

    def vault(self) -> CheckpointVault:
        assert self.spec is not None
        with safefs.as_user(self.identity):
            return CheckpointVault(self.home.job_vault(self.name), keep=self.spec.keep_checkpoints)


# -- launching ------------------------------------------------------------------------------
@dataclass
class Launch:
    """What the blocking half of a launch found and did."""

    blocker: Optional[str] = None       # why it must not start (a missing path, another run's checkpoint)
    notes: list[str] = field(default_factory=list)  # checkpoint notes for the history
    strays: list = field(default_factory=list)      # processes of the job alive before launch (killed)
    stray_survivors: list = field(default_factory=list)
    finished: Optional[str] = None      # the training is over already: the reason
    clear_run_dir: bool = False         # a fresh start in a new run directory
    child: Optional[launcher.Child] = None
    spawn_error: Optional[str] = None   # the training process could not be started (not transient)
    env_error: Optional[str] = None     # the job's env_file cannot be read or parsed (names no value)
    resume: Optional[Path] = None
    position: tuple[int, int] = (0, 0)
    images: int = 0                     # images of the next epoch in the state resumed from
    log_offset: int = 0


def launch_blocker(work: JobWork) -> Optional[str]:
    """Why the next attempt must not start (a missing path, another run's checkpoint), or None.

    Reads only; the files are changed by prepare_resume once nothing blocks."""
    spec, run_dir = work.spec, work.run_dir
    assert spec is not None
    vault = work.vault()
    with safefs.as_user(work.identity):  # the run directory is the job user's: read it as them
        choice = choose(run_dir, vault, extended=bool(work.job.extend_pending))
    if choice.finished:
        return None
    best = choice.state
    if best is not None:
        mismatch = checkpoint_mismatch(best.train_args, spec.train, run_dir, work.edited)
        if mismatch:
            return (f"{best.path} is not this job's checkpoint: {mismatch}; it is never resumed from "
                    "(move it away, or submit the job under another name)")
    owner = (work.identity.uid, work.identity.gid) if work.identity is not None else None
    model = None if best is not None else str(spec.train["model"])
    check = preflight.check(str(spec.train["data"]), model, work.name, owner)
    return None if check.ok else check.reason


def prepare_launch(work: JobWork, executor, attempt: int, devices: Optional[str],
                   abandoned: threading.Event, trackers: Optional[dict[str, Any]] = None) -> Launch:
    """Check, kill strays, make the run directory resumable, write the plan, start the attempt.

    ``abandoned`` is set by the loop when it stopped waiting (the deadline passed): nothing is
    started then, and a process started just before is killed again."""
    name, spec = work.name, work.spec
    assert spec is not None
    work.home.ensure_job(name)
    if work.identity is not None:  # the folder is 0700: its owner's before anything is looked at in it as them
        chown_job_dir(work)
    blocker = launch_blocker(work)
    if blocker is not None:
        return Launch(blocker=blocker)
    found = Launch()
    found.strays = executor.strays(name)
    if found.strays:
        found.stray_survivors = executor.kill_job_now(name, None)
    vault = work.vault()
    with safefs.as_user(work.identity):
        plan = prepare_resume(work.run_dir, vault, attempt, extended=bool(work.job.extend_pending))
    found.notes = list(plan.notes)
    if plan.finished:
        found.finished = "training already finished (stripped last.pt)"
        return found
    found.clear_run_dir = plan.resume_from is None and plan.epochs_done == 0 and work.run_dir is not None
    if plan.epochs_done >= spec.epochs:
        found.finished = f"all {spec.epochs} epochs in the checkpoint"
        return found
    found.resume, found.position, found.images = plan.resume_from, plan.position, plan.images
    try:
        environment = jobenv.job_environment(spec.env, spec.env_file, work.identity, work.pass_env)
    except jobenv.EnvFileError as err:  # the owner fixes the file and starts the job again
        found.env_error = str(err)
        return found
    plan_path = write_plan(work, executor, attempt, plan.resume_from, devices, trackers)
    log_path = work.home.job_log(name)
    with safefs.as_user(work.identity):  # the log's folder is the job user's: look at it as them
        found.log_offset = log_path.stat().st_size if log_path.exists() else 0
    if abandoned.is_set():
        return found
    try:
        found.child = executor.spawn(name, attempt, plan_path, log_path, work.home.job_yolo_config(name),
                                     work.identity, spec, environment)
    except OSError as exc:
        if getattr(exc, "transient", False):
            raise  # Slurm's controller did not answer: the launch is tried again later
        found.spawn_error = str(exc)
        return found
    if abandoned.is_set():  # the loop gave up on this launch meanwhile: nothing may train unwatched
        abandon(executor, name, found.child)
        found.child = None
    return found


def write_plan(work: JobWork, executor, attempt: int, resume: Optional[Path], devices: Optional[str],
               trackers: Optional[dict[str, Any]] = None) -> Path:
    """The attempt's instructions for the child; stale progress/exit files are removed first."""
    name, spec, home, job = work.name, work.spec, work.home, work.job
    assert spec is not None
    exit_record = home.job_exit_record(name)  # a drill asked of an ended attempt is not this one's:
    for stale in (home.job_progress(name), exit_record, drill.request_path(exit_record)):
        stale.unlink(missing_ok=True)
    train = dict(spec.train)
    train.setdefault("project", str(home.job_runs(name)))
    train.setdefault("name", "train")
    # data: a resume reads the job's dataset, not the one the checkpoint recorded (Ultralytics
    # allows this override), so a moved dataset is fixed by fixing the job.
    # device: the job's recorded set (Ultralytics accepts it on resume: a `move` after a GPU failure).
    train["device"] = devices or spec.device or "cpu"
    overrides: dict[str, Any] = {"device": train["device"], "data": str(spec.train["data"])}
    for key in sorted(RESUME_OVERRIDABLE & spec.train.keys()):  # what `edit` may have changed
        overrides[key] = spec.train[key]
    if job.batch_override:
        overrides["batch"] = train["batch"] = job.batch_override
    plan = to_json(Plan(
        job=name, attempt=attempt, epochs=spec.epochs, train=train,
        resume=str(resume) if resume else None, overrides=overrides,
        checkpoint_every_s=spec.checkpoint_every_s,
        # extended: the child rewrites the checkpoint's epochs (Ultralytics ignores an override)
        extend_epochs=spec.epochs if "epochs" in work.edited else None,
        progress_file=str(home.job_progress(name)),
        exit_record=str(home.job_exit_record(name)),
        trackers=trackers,
    ))
    executor.adjust_plan(plan, spec)
    path = home.job_plan(name)
    write_json_atomic(path, plan)
    if work.identity is not None:
        chown_job_dir(work)
    return path


def chown_job_dir(work: JobWork) -> None:
    """The job's user gets the folders and files the daemon made for them, and nothing through a link."""
    assert work.identity is not None
    safefs.chown_tree(work.home.job_dir(work.name), work.identity.uid, work.identity.gid)


def abandon(executor, name: str, child: launcher.Child) -> list:
    """An attempt nobody will watch (not recorded, or its launch given up on): kill and reap it."""
    survivors = executor.kill_job_now(name, child)
    if child.popen is not None:
        child.popen.wait()  # reap it: no zombie left behind
    child.close()
    return survivors


# -- snapshots --------------------------------------------------------------------------------
def snapshots(work: JobWork) -> list[CheckpointInfo]:
    """Copy a newly saved last.pt or mid-epoch state into the vault once it verifies; the copies kept.
    OSError (a full disk): what was kept before it is lost to the history only, never the files."""
    run_dir = work.run_dir
    if run_dir is None or work.spec is None:
        return []
    vault = work.vault()
    kept = []
    for source in (last_pt(run_dir), midepoch_pt(run_dir), final_resumable_pt(run_dir)):
        with safefs.as_user(work.identity):  # the run directory is the job user's: read it as them
            info = vault.snapshot(source)
        if info is not None:
            kept.append(info)
    return kept


# -- an ended attempt ------------------------------------------------------------------------
@dataclass
class EndFacts:
    """What an ended attempt left behind, gathered off the loop once every process of it is gone."""

    leftovers: list
    kept: list[CheckpointInfo]
    record: Optional[ExitRecord]
    log_tail: str
    oom_killed: bool
    best: Optional[CheckpointInfo] = None
    finished: bool = False


def end_facts(work: JobWork, executor, log_offset: int, pid: int, killed: bool) -> EndFacts:
    """Kill what is left of the job (torchrun workers), take the last snapshot, read the exit
    record and the attempt's log, and measure the furthest verified state."""
    leftovers = executor.kill_job_now(work.name, None)
    kept = snapshots(work)
    with safefs.as_user(work.identity):  # the job user's files
        record = from_json(ExitRecord, read_json(work.home.job_exit_record(work.name)))
        tail = read_log_tail(work.home.job_log(work.name), since_offset=log_offset)
    facts = EndFacts(leftovers, kept, record, tail, killed and kernel_oom_killed(pid))
    if work.spec is not None:
        vault = work.vault()
        with safefs.as_user(work.identity):
            facts.best, facts.finished = best_verified(work.run_dir, vault)
    return facts


# -- removing ----------------------------------------------------------------------------------
def purge(folder: Path) -> list[str]:
    """Delete the job's folder; what could not be deleted. shutil.rmtree walks by file descriptor
    and never follows a link (a link inside is removed, not its target), so doing it as root acts
    on nothing outside."""
    failed: list[str] = []

    def note(_fn, path, exc_info) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):  # gone already is what we want
            failed.append(f"{path}: {exc_info[1].strerror or exc_info[1]}")
    shutil.rmtree(folder, onerror=note)
    return failed
