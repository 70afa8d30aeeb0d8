"""Launch one training attempt as a child process and notice its exit at once.

Each attempt runs ``python -m supervisor.child.train PLAN`` in its own session
(so a terminal's Ctrl-C or the daemon's own signals never reach it), with
stdout and stderr appended to the job's log file. Exits are noticed through a
pidfd (Linux >= 5.3) registered with the daemon's selector: event-driven, no
polling. A re-adopted process (started by an earlier daemon) gets a pidfd too,
though its exit status is not ours to read; its exit record tells instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import psutil

from supervisor import safefs
from supervisor.process import jobenv
from supervisor.process.jobenv import JobEnvironment
from supervisor.process.torchrun import is_torch_launcher
from supervisor.safefs import Identity

JOB_ENV = "YOLO_SUPERVISOR_JOB"
# Which daemon started the process (its home): two daemons on one host may both have a job
# called "train", and neither may take the other's for a stray.
DAEMON_ENV = "YOLO_SUPERVISOR_DAEMON"
ATTEMPT_ENV = "YOLO_SUPERVISOR_ATTEMPT"
LOG_BANNER = "==== yolo-supervisor: attempt"
# The interpreter for training children; default the daemon's own. Tests of a root daemon set it
# to one a dropped uid can run (root's own python may live where others cannot enter).
CHILD_PYTHON_ENV = "YOLO_SUPERVISOR_CHILD_PYTHON"
# The daemon's own umask keeps its files private (0077); a training writes its runs with the
# usual 022, as it would run by hand (inside the job's folder, which is its owner's alone).
CHILD_UMASK = 0o022


@dataclass
class Child:
    """A running attempt's runtime handle (never persisted)."""

    job: str
    pid: int
    start_time: float          # psutil create_time: pid + start time identify the process
    pidfd: int
    popen: Optional[subprocess.Popen] = None  # None when re-adopted
    started_mono: float = field(default_factory=time.monotonic)

    def exit_status(self) -> tuple[Optional[int], Optional[int]]:
        """(exit_code, signal) once the process has ended; (None, None) when unknowable."""
        if self.popen is None:
            return None, None
        rc = self.popen.wait()
        return (None, -rc) if rc < 0 else (rc, None)

    def close(self) -> None:
        try:
            os.close(self.pidfd)
        except OSError:
            pass


def child_env(job: str, attempt: int, yolo_config_dir: Path, daemon_id: Optional[str] = None,
              user: Optional[Identity] = None, environment: Optional[JobEnvironment] = None) -> dict[str, str]:
    """The attempt's environment (supervisor/process/jobenv.py): built for ``user`` when it runs as
    them, the job's ``env:``/``env_file:`` values, then offline mode, the per-job Ultralytics config
    and the job markers.

    The markers are inherited by every descendant (torchrun and its workers
    included), which is how ``job_processes`` finds them even after they were
    reparented.
    """
    markers = {
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(yolo_config_dir),
        "PYTHONUNBUFFERED": "1",
        # CUDA's default order is fastest-first; NVML's is PCI bus: make device 0 the same GPU for both.
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        JOB_ENV: job,
        ATTEMPT_ENV: str(attempt),
    }
    if daemon_id is not None:
        markers[DAEMON_ENV] = daemon_id
    run_as = user.uid if safefs.needs_switch(user) and user is not None else None
    return jobenv.build(os.environ, run_as, child_python(), environment or JobEnvironment(), markers)


def child_python() -> str:
    return os.environ.get(CHILD_PYTHON_ENV) or sys.executable


def spawn(job: str, attempt: int, plan_path: Path, log_path: Path, yolo_config_dir: Path,
          user: Optional[Identity] = None, daemon_id: Optional[str] = None,
          environment: Optional[JobEnvironment] = None) -> Child:
    """Start an attempt; as root, ``user`` is who it runs as: their uid, primary group and groups."""
    log_fd = open_log(log_path, user)
    try:
        os.write(log_fd, f"\n{LOG_BANNER} {attempt} of job {job} at "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')} ====\n".encode())
        kwargs = {}
        if safefs.needs_switch(user):
            assert user is not None
            kwargs.update(user=user.uid, group=user.gid, extra_groups=list(user.groups))
        popen = subprocess.Popen(
            [child_python(), "-m", "supervisor.child.train", str(plan_path)],
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
            env=child_env(job, attempt, yolo_config_dir, daemon_id, user, environment), start_new_session=True,
            close_fds=True, umask=CHILD_UMASK, **kwargs,
        )
    finally:
        os.close(log_fd)
    return Child(job=job, pid=popen.pid, start_time=process_start_time(popen.pid) or time.time(),
                 pidfd=os.pidfd_open(popen.pid), popen=popen)


def open_log(log_path: Path, user: Optional[Identity]) -> int:
    """The job's log, opened for appending as the job's user and never through a link.

    The folder is the user's: whatever they put at the log's name (a link to a root
    file, a hard link, a FIFO) is moved aside, and a fresh log is started.
    """
    with safefs.as_user(user):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            return safefs.open_regular(log_path, flags, 0o600)
        except safefs.UnsafePath:
            os.rename(log_path, log_path.with_name(f"{log_path.name}.not-a-log-{time.time_ns()}"))
            return safefs.open_regular(log_path, flags | os.O_EXCL, 0o600)


def process_start_time(pid: int) -> Optional[float]:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


START_TIME_SLACK_S = 0.05  # psutil's create_time is jiffies since boot: equal within this is the same process


def adopt(job: str, pid: int, start_time: Optional[float]) -> Optional[Child]:
    """Re-attach to an attempt started by an earlier daemon, if it is the same process still alive.

    The pidfd is opened first and the start time checked after: the pidfd then names the process
    that was checked, even if the pid is reused a moment later."""
    if start_time is None:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if _same_process(pid, start_time):
        return Child(job=job, pid=pid, start_time=start_time, pidfd=fd, popen=None)
    os.close(fd)
    return None


def _same_process(pid: int, start_time: float) -> bool:
    """``pid`` still names the live process that started at ``start_time``."""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - start_time) <= START_TIME_SLACK_S and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def identify(job: str, pid: int) -> Optional[Child]:
    """A handle (pid, start time, pidfd) on a live process found by pid now; for tests and tools."""
    start = process_start_time(pid)
    return adopt(job, pid, start) if start is not None else None


def job_processes(job: str, root: Optional[Child] = None, daemon_id: Optional[str] = None,
                  uid: Optional[int] = None) -> list[psutil.Process]:
    """Every live process of a job: descendants of the attempt plus anything carrying its marker
    (with ``daemon_id``: the marker of that daemon only) that runs as ``uid``, the uid the job
    runs as (None: any uid; only for tools that clean up after tests, never for the daemon).

    The attempt's own process is believed only while its start time matches the one recorded
    (a pid alone may name whatever process reused it). torchrun's workers start in new sessions
    and survive a SIGKILL of the trainer as orphans, so the process group is not enough.
    """
    found: dict[int, psutil.Process] = {}
    if root is not None and root.pid and _same_process(root.pid, root.start_time):
        try:
            proc = psutil.Process(root.pid)
            for p in [proc, *proc.children(recursive=True)]:
                found[p.pid] = p
        except psutil.Error:
            pass
    for p in marked_processes({job: uid}, daemon_id):
        found.setdefault(p.pid, p)
    return [p for p in found.values() if _alive(p)]


def marked_processes(jobs: Mapping[str, Optional[int]], daemon_id: Optional[str] = None) -> list[psutil.Process]:
    """The processes carrying the marker of any of ``jobs`` (of that daemon, with ``daemon_id``)
    and running as that job's uid (``jobs``: name -> uid), in one pass over the process table:
    reading every process's environment is the cost.

    The uid check: anyone can put a marker in their own process's environment, and a root
    daemon signals what it takes for a job's; a forged marker reaches only the forger's own.
    """
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["pid"]):
        if p.pid == me:
            continue
        try:
            env = p.environ()
            job = env.get(JOB_ENV)
            if job in jobs and (daemon_id is None or env.get(DAEMON_ENV) == daemon_id) \
                    and (jobs[job] is None or p.uids().real == jobs[job]):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_torch_launcher_process(p: psutil.Process) -> bool:
    try:
        return is_torch_launcher(p.cmdline())
    except psutil.Error:
        return False


def signal_job(job: str, root: Optional[Child], sig: int, daemon_id: Optional[str] = None,
               uid: Optional[int] = None) -> list[int]:
    """Send ``sig`` to every process of the job; return the pids signalled.

    A SIGTERM goes only to the processes that act on it (``term_recipients``); the SIGKILL after
    the grace period (``kill_job_now``) reaches every process. Never by a bare pid: the attempt
    itself through the pidfd the daemon holds, the others through psutil, which checks each
    process's start time before it signals.
    """
    procs = job_processes(job, root, daemon_id, uid)
    if sig == signal.SIGTERM:
        procs = term_recipients(procs)
    return [p.pid for p in procs if _send(p, sig, root)]


def _send(p: psutil.Process, sig: int, root: Optional[Child]) -> bool:
    if root is not None and p.pid == root.pid:
        try:
            signal.pidfd_send_signal(root.pidfd, sig)
            return True
        except ProcessLookupError:
            return False  # it has ended
        except OSError:
            pass  # not a pidfd (a stand-in handle): psutil checks the start time instead
    try:
        p.send_signal(sig)
        return True
    except psutil.Error:
        return False


def term_recipients(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Of a job's processes, those a SIGTERM is for: the attempt itself, the DDP ranks (torchrun's
    children), and any process whose parent is not the job's (nobody else would stop it). Not:

    - torchrun: on a TERM it TERMs its workers and SIGKILLs them 30 s later, which could cut rank
      0's save short; it exits by itself once they have (supervisor/child/ddp.py).
    - the helpers of a trainer, DataLoader workers above all: PyTorch makes a worker die on TERM,
      and its trainer then fails at once ("DataLoader worker ... is killed by signal: Terminated"),
      before it could save. They end with their trainer.
    """
    pids = {p.pid for p in procs}
    launchers = {p.pid for p in procs if _is_torch_launcher_process(p)}
    chosen = []
    for p in procs:
        try:
            parent = p.ppid()
        except psutil.Error:
            continue
        if p.pid not in launchers and (parent in launchers or parent not in pids):
            chosen.append(p)
    return chosen


def kill_job_now(job: str, root: Optional[Child], timeout: float = 5.0,
                 daemon_id: Optional[str] = None, uid: Optional[int] = None) -> list[int]:
    """SIGKILL every process of the job and wait until they are gone; return survivors' pids.
    Blocks up to ``timeout``: the daemon runs it on a worker, never on its loop."""
    procs = job_processes(job, root, daemon_id, uid)
    for p in procs:
        _send(p, signal.SIGKILL, root)
    # Not psutil.wait_procs: it would waitpid() our own child and steal its exit status from Popen.
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)
        alive = [p for p in alive if _alive(p)]
    return [p.pid for p in alive]


def become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER: orphaned grandchildren (torchrun workers) reparent to us, not init."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER = 36
    except (OSError, AttributeError):
        return False


def _has_zombie_child() -> bool:
    """Whether any child of ours has exited and waits to be reaped; reaps nothing (WNOWAIT)."""
    try:
        return os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # no children at all
        return False


def reap_orphans(tracked: set[int]) -> list[int]:
    """Reap zombie children we adopted as subreaper, leaving our own attempts to Popen."""
    reaped: list[int] = []
    if not _has_zombie_child():
        return reaped  # the usual tick: one syscall instead of a walk over every process on the host
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return reaped
    for p in children:
        if p.pid in tracked:
            continue
        try:
            if p.status() == psutil.STATUS_ZOMBIE and os.waitpid(p.pid, os.WNOHANG)[0]:
                reaped.append(p.pid)
        except (psutil.Error, ChildProcessError, OSError):
            pass
    return reaped
