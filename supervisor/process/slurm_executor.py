"""Attempts as Slurm jobs (``executor: slurm``): one ``sbatch`` per attempt, watched with squeue.

The daemon runs on a login or head node; each attempt runs the same child entry point as a
local one on a compute node, reading its plan from and writing its progress, exit record,
log and checkpoints to the daemon's home, which must be on a filesystem the nodes share.

Which jobs are still running is asked by a thread (supervisor.process.slurm_watch), and the
end of a Slurm job reaches the daemon's ``on_child_exit`` like the exit of a local child.
sbatch, scancel and the look for strays before a submit run on the daemon's workers
(supervisor/daemon/workers.py), each with a deadline (``command_timeout_s``), never on its loop.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import signal as _signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from supervisor.jobs.slurm_options import SlurmOptions, SlurmSettings, time_seconds
from supervisor.jobs.machine import On
from supervisor.jobs.states import JobState
from supervisor.observe.logging import get_logger
from supervisor.process import launcher, slurm
from supervisor.contract import ExitRecord, Progress
from supervisor.process.classify import Classified
from supervisor.process.slurm import SlurmError, SlurmJob, SlurmUnavailable
from supervisor.process.slurm_watch import SlurmChild, SlurmWatch
from supervisor.process.jobenv import JobEnvironment
from supervisor.safefs import Identity

if TYPE_CHECKING:
    from supervisor.jobs.spec import JobSpec
    from supervisor.store import AttemptRecord, JobRecord

COMMANDS = ("sbatch", "squeue", "scontrol", "scancel")
# Filesystems that compute nodes commonly mount from elsewhere (the home must be on one of them).
SHARED_FILESYSTEMS = frozenset({"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "fuse.ceph-fuse",
                                "fuse.glusterfs", "glusterfs", "panfs", "wekafs", "fuse.weka", "9p", "fuse.sshfs",
                                "virtiofs", "orangefs", "fuse.juicefs", "cvmfs", "afs"})
RETRY_S = 15.0  # a cancel the controller did not take is tried again after this (not every tick)


class SlurmExecutor:
    kind = "slurm"
    places_gpus = False  # Slurm allocates and places; the daemon's own GPU placement stands aside

    def __init__(self, settings: Callable[[], SlurmSettings], daemon_id: str):
        missing = [c for c in COMMANDS if shutil.which(c) is None]
        if missing:
            raise ValueError(f"executor: slurm: {', '.join(missing)} not found on PATH; install Slurm's client "
                             "commands on this host (Debian: slurm-client), or set executor: local")
        self.settings = settings
        self.daemon_id = daemon_id
        self.tag = hashlib.sha1(daemon_id.encode()).hexdigest()[:8]
        self.log = get_logger()
        self._cancel_retry: dict[str, tuple[str, float]] = {}  # Slurm job id -> (job name, when): a failed cancel
        self._strays: dict[str, list[str]] = {}        # job name -> unwatched Slurm jobs found before a launch
        fs = filesystem_type(daemon_id)
        if fs not in SHARED_FILESYSTEMS:
            self.log.warning(f"the daemon's home {daemon_id} is on {fs or 'an unknown filesystem'}, which compute "
                             "nodes usually do not share: they must see it at the same path (a node that cannot "
                             "read its plan fails the job's first attempt, saying so)")
        self.watch = SlurmWatch(settings)

    # -- naming -------------------------------------------------------------------------
    def slurm_name(self, name: str) -> str:
        """The Slurm job name of every attempt of ``name``: how strays of this daemon are found."""
        return f"ys-{self.tag}-{name}"

    # -- submitting ---------------------------------------------------------------------
    def spawn(self, name: str, attempt: int, plan_path: Path, log_path: Path, yolo_config_dir: Path,
              user: Optional[Identity], spec: "JobSpec", environment: Optional[JobEnvironment] = None) -> SlurmChild:
        s = self.settings()
        options = spec.slurm.merged_over(s.defaults) if spec.slurm else s.defaults
        args = self._sbatch_args(name, attempt, plan_path, log_path, spec, options, s)
        fd = launcher.open_log(log_path, user)
        try:
            os.write(fd, f"\n{launcher.LOG_BANNER} {attempt} of job {name} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
                         f" (sbatch) ====\n".encode())
        finally:
            os.close(fd)
        python = s.python or os.environ.get(launcher.CHILD_PYTHON_ENV) or sys.executable
        env = slurm.submit_env(launcher.child_env(name, attempt, yolo_config_dir, self.daemon_id, user, environment))
        out = slurm.run(args, s.command_timeout_s, input=slurm.batch_script(python, str(plan_path), name, attempt),
                        env=env, user=user)
        job_id = slurm.parse_job_id(out)
        self.log.info("submitted to Slurm", job=name, attempt=attempt, slurm_job_id=job_id)
        return self.watch.track(name, job_id)

    def _sbatch_args(self, name: str, attempt: int, plan_path: Path, log_path: Path, spec: "JobSpec",
                     o: SlurmOptions, s: SlurmSettings) -> list[str]:
        if o.time is not None and time_seconds(o.time) <= s.signal_before_s:
            raise SlurmError(f"slurm.time {o.time!r} is not longer than slurm.signal_before_s "
                             f"({s.signal_before_s}s): the notice would come before any training")
        return slurm.sbatch_args(
            name=self.slurm_name(name), log=str(log_path), workdir=str(plan_path.parent),
            signal_before_s=s.signal_before_s, time_limit=o.time, partition=o.partition, gpus=gpu_count(spec, o),
            cpus=o.cpus, mem=o.mem, account=o.account, qos=o.qos, extra=o.extra_args or (),
            comment=f"yolo-supervisor:{name}:attempt-{attempt}")

    def adjust_plan(self, plan: dict[str, Any], spec: "JobSpec") -> None:
        """Inside an allocation the job's GPUs are 0..N-1, whatever indices the job file names
        (``train.device: 2,5``) or however many it asks for (``gpus: 2``)."""
        n = spec.gpu_count
        if n:
            plan["train"]["device"] = plan["overrides"]["device"] = ",".join(str(i) for i in range(n))

    def recorded(self, child: launcher.Child) -> dict[str, Any]:
        return {"slurm_job_id": child.slurm_job_id} if isinstance(child, SlurmChild) else {}

    # -- after a daemon restart -------------------------------------------------------------
    def adopt(self, job: "JobRecord", attempt: "AttemptRecord") -> Optional[SlurmChild]:
        """Watch the attempt's recorded Slurm job again; the poller finds out whether it still runs."""
        job_id = getattr(attempt, "slurm_job_id", None)
        return self.watch.track(job.name, job_id) if job_id else None

    def describe(self, job: "JobRecord", attempt: "AttemptRecord") -> str:
        return f"Slurm job {getattr(attempt, 'slurm_job_id', None)}"

    # -- signals ----------------------------------------------------------------------------
    def signal_job(self, name: str, child: Optional[launcher.Child], sig: int) -> list:
        """``sig`` to the training process through ``scancel --batch --signal`` (the grace before
        the cancel is the daemon's): the batch shell only, as the --signal=B: notice does, so a DDP
        parent hands it to its ranks (its stop request) and torchrun and DataLoader workers get
        none, as locally. A job that waits for an allocation has nothing to save and is cancelled
        at once."""
        if not isinstance(child, SlurmChild):
            return []
        job_id = child.slurm_job_id
        if child.last is not None and child.last.pending:
            return [job_id] if self._scancel(name, ["scancel", job_id]) else []
        sig_name = _signal.Signals(sig).name.removeprefix("SIG")
        try:
            slurm.run(["scancel", "--batch", f"--signal={sig_name}", job_id], self.settings().command_timeout_s,
                      env=slurm.env_for_commands())
        except SlurmUnavailable as err:  # the grace runs out and the cancel is tried (and retried)
            self.log.error("scancel --signal failed", job=name, slurm_job_id=job_id, error=str(err))
            return []
        except SlurmError as err:  # pending ("Job can not be altered now"), or already ended
            if child.last is not None and child.last.state == "RUNNING":
                self.log.info("scancel --signal", job=name, slurm_job_id=job_id, note=str(err))
                return []
            return [job_id] if self._scancel(name, ["scancel", job_id]) else []  # it may not have started yet
        self.watch.wake()
        return [job_id]

    def kill_job_now(self, name: str, child: Optional[launcher.Child]) -> list:
        """Cancel the attempt's job (``child`` None: the strays ``strays`` found); returns the ids
        a cancel could not reach yet (tried again every STEP_RETRY_S)."""
        ids = [child.slurm_job_id] if isinstance(child, SlurmChild) else self._strays.pop(name, [])
        return [job_id for job_id in ids if not self._scancel(name, ["scancel", job_id])]

    def strays(self, name: str) -> list:
        """Active Slurm jobs of ``name`` from this daemon that it does not watch (e.g. submitted
        just before a crash, unrecorded), asked before every launch: never two allocations of one job."""
        s = self.settings()
        out = slurm.run(["squeue", "--noheader", f"--name={self.slurm_name(name)}", "--format=%i"],
                        s.command_timeout_s, env=slurm.env_for_commands())
        watched = self.watch.watched_ids()
        found = [i for i in out.split() if i.isdigit() and i not in watched]
        self._strays[name] = found
        return found

    def _scancel(self, name: str, args: list[str]) -> bool:
        job_id = args[-1]
        try:
            slurm.run(args, self.settings().command_timeout_s, env=slurm.env_for_commands())
        except SlurmUnavailable as err:
            self.log.error("scancel failed; trying again", job=name, slurm_job_id=job_id, error=str(err),
                           retry_in_s=RETRY_S)
            self._cancel_retry[job_id] = (name, time.monotonic() + RETRY_S)
            return False
        except SlurmError as err:  # already ended ("Job/step already completing or completed")
            self.log.info("scancel", job=name, slurm_job_id=job_id, note=str(err))
        self._cancel_retry.pop(job_id, None)
        self.watch.wake()
        return True

    # -- classification ---------------------------------------------------------------------
    def refine(self, name: str, child: launcher.Child, local: Classified, record: Optional[ExitRecord],
               progress: Optional[Progress], tail: str, by_daemon: bool) -> Classified:
        """Slurm's end of the job, mapped onto the daemon's causes (supervisor.process.slurm.outcome)."""
        if not isinstance(child, SlurmChild):
            return local
        started = progress is not None or record is not None
        lines = [ln.strip() for ln in tail.splitlines() if ln.strip() and launcher.LOG_BANNER not in ln]
        return slurm.outcome(child.final, local, record, started, by_daemon, lines[-1] if lines else "")

    # -- what status shows, and the history ----------------------------------------------------
    def view(self, name: str) -> Optional[dict[str, Any]]:
        child = self.watch.child_of(name)
        if child is None:
            return None
        last = child.last
        return {"job_id": child.slurm_job_id, "state": last.state if last else "SUBMITTED",
                "reason": last.reason if last else "", "node": last.node if last else "",
                "warning": self.watch.warning}

    def housekeeping(self, daemon) -> None:
        """Loop thread: a new Slurm state, pending reason or node goes to the history (and, while
        the attempt waits for its first batch, to the job's reason); failed cancels are retried."""
        for name, run in list(daemon.running.items()):
            child = run.child
            if not isinstance(child, SlurmChild):
                continue
            if not child.ended and daemon.home.job_exit_record(name).exists():
                self.watch.wake()  # the child has written its exit record: ask Slurm now, not in poll_s
            if child.last is None:
                continue
            last = child.last
            key = (last.state, last.reason if last.pending else "", last.node)
            if key == child.reported:
                continue
            child.reported = key
            daemon.event(name, "slurm", last.describe(), job_id=child.slurm_job_id, state=last.state,
                         pending_reason=last.reason if last.pending else None, node=last.node or None)
            if last.node:
                daemon.store.update_attempt(run.attempt_id, slurm_node=last.node)
            job = daemon.store.get_job(name)
            if job is not None and job.state == JobState.STARTING.value:
                daemon.transition(name, On.ALLOCATION_WAITING, f"attempt {run.attempt_no}: {_waiting(last)}")
        for job_id, (name, due) in list(self._cancel_retry.items()):
            if due <= time.monotonic():  # on a worker: scancel waits up to command_timeout_s
                task = functools.partial(self._scancel, name, ["scancel", job_id])
                daemon.workers.submit(("scancel", job_id), task, self.settings().command_timeout_s + 5,
                                      lambda outcome: None)

def filesystem_type(path: str) -> Optional[str]:
    """The type of the filesystem ``path`` is on, from /proc/mounts (the longest mount point above it)."""
    best, kind = "", None
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    mount = parts[1].replace("\\040", " ")
                    if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                        best, kind = mount, parts[2]
    except OSError:
        return None
    return kind


def gpu_count(spec: "JobSpec", options: SlurmOptions) -> int:
    """GPUs per allocation: ``slurm.gpus``, else as many as the job trains on (train.device, or gpus: N)."""
    n = spec.gpu_count
    if options.gpus is None:
        return n
    if n and options.gpus != n:
        where = "gpus" if spec.gpus else f"train.device {spec.device!r}"
        raise SlurmError(f"slurm.gpus: {options.gpus} does not match the job's {where} ({n} GPU(s))")
    return options.gpus


def _waiting(job: SlurmJob) -> str:
    if job.pending:
        reason = f" ({job.reason})" if job.reason and job.reason != "None" else ""
        return f"queued in Slurm as job {job.job_id}{reason}"
    return f"{job.state.lower()} as Slurm job {job.job_id}" + (f" on {job.node}" if job.node else "")
