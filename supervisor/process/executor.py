"""Where attempts run: the seam between the daemon's job lifecycle and the process mechanics.

The daemon core decides (launch, watch, stop, classify, restart); an executor carries out the
few things that differ between a training run as a child of the daemon (``local``, the
default: supervisor.process.launcher) and one run as a Slurm job (``slurm``:
supervisor.process.slurm_executor). Both run the same child entry point with the same plan,
progress file and exit record, and hand the daemon a ``launcher.Child`` whose ``pidfd``
becomes readable when the attempt ends, so the loop hears of every end the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from supervisor.process import launcher
from supervisor.contract import ExitRecord, Progress
from supervisor.process.classify import Classified
from supervisor.process.jobenv import JobEnvironment
from supervisor.safefs import Identity

if TYPE_CHECKING:
    from supervisor.daemon.config import DaemonConfig
    from supervisor.jobs.spec import JobSpec
    from supervisor.store import AttemptRecord, JobRecord


class LocalExecutor:
    """Attempts as child processes of the daemon, found by pid and by their environment marker."""

    kind = "local"
    places_gpus = True  # the daemon's placement gives each job GPUs of this host (supervisor/placement.py)

    def __init__(self, daemon_id: str, uid_of: Callable[[str], int] = lambda name: os.geteuid()):
        self.daemon_id = daemon_id
        # The uid job NAME runs as: a process is the job's only if it runs as that uid.
        self.uid_of = uid_of

    def spawn(self, name: str, attempt: int, plan_path: Path, log_path: Path, yolo_config_dir: Path,
              user: Optional[Identity], spec: "JobSpec", environment: Optional[JobEnvironment] = None) -> launcher.Child:
        return launcher.spawn(name, attempt, plan_path, log_path, yolo_config_dir, user, daemon_id=self.daemon_id,
                              environment=environment)

    def adopt(self, job: "JobRecord", attempt: "AttemptRecord") -> Optional[launcher.Child]:
        """The attempt's process if it still runs (same pid, same start time)."""
        return launcher.adopt(job.name, job.pid, job.pid_start_time) if job.pid else None

    def describe(self, job: "JobRecord", attempt: "AttemptRecord") -> str:
        return f"pid {job.pid}"

    def signal_job(self, name: str, child: Optional[launcher.Child], sig: int) -> list:
        return launcher.signal_job(name, child, sig, daemon_id=self.daemon_id, uid=self.uid_of(name))

    def kill_job_now(self, name: str, child: Optional[launcher.Child]) -> list:
        """SIGKILL every process of the job (``child`` None: whatever carries its marker)."""
        return launcher.kill_job_now(name, child, daemon_id=self.daemon_id, uid=self.uid_of(name))

    def strays(self, name: str) -> list:
        """What of the job runs although the daemon has no attempt for it: pids here."""
        return [p.pid for p in launcher.job_processes(name, daemon_id=self.daemon_id, uid=self.uid_of(name))]

    def recorded(self, child: launcher.Child) -> dict[str, Any]:
        """Extra columns for the attempt and job rows (none for a local process)."""
        return {}

    def adjust_plan(self, plan: dict[str, Any], spec: "JobSpec") -> None:
        """Change the child's plan where this executor needs it (nothing locally)."""

    def refine(self, name: str, child: launcher.Child, local: Classified, record: Optional[ExitRecord],
               progress: Optional[Progress], tail: str, by_daemon: bool) -> Classified:
        """The cause of an ended attempt: locally, what exit status, exit record and log say."""
        return local

    def view(self, name: str) -> Optional[dict[str, Any]]:
        """Executor-specific facts for ``status`` (Slurm: job id, state, reason, node)."""
        return None

    def housekeeping(self, daemon) -> None:
        """Once a tick on the loop thread."""


def make_executor(config: "DaemonConfig", daemon_id: str, settings=None,
                  uid_of: Callable[[str], int] = lambda name: os.geteuid()):
    """The executor config.yaml names; ValueError (with the field) when it cannot work here."""
    if config.executor == "slurm":
        from supervisor.process.slurm_executor import SlurmExecutor

        return SlurmExecutor(settings or (lambda: config.slurm), daemon_id)
    return LocalExecutor(daemon_id, uid_of)
