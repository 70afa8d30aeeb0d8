"""The Slurm jobs the daemon waits on, and the thread that asks Slurm about them.

Each watched attempt is a ``SlurmChild``: a ``launcher.Child`` whose ``pidfd`` is the read end
of a pipe. Every ``poll_s`` seconds (or at once when woken) one ``squeue`` call covers every
watched job; a job that ended is looked up with ``scontrol show job`` (exit code, node), then
``sacct`` where accounting exists, and the write end of its pipe is closed: the daemon's
selector sees EOF and handles the end like a local child's exit. The loop thread never waits
for these calls. Only a state Slurm reports ends an attempt: a controller that does not answer,
or an answer not understood, leaves every job as it is (a warning in ``status``), so an outage
pauses supervision and never cancels, charges or restarts anything.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from supervisor.jobs.slurm_options import SlurmSettings
from supervisor.observe.logging import get_logger
from supervisor.process import launcher, slurm
from supervisor.process.slurm import SlurmError, SlurmJob, SlurmUnavailable

MISSING_POLLS = 2  # polls in a row in which Slurm knows nothing of a job before it counts as ended


@dataclass
class SlurmChild(launcher.Child):
    """An attempt that is a Slurm job; its ``pidfd`` becomes readable once the job has ended."""

    slurm_job_id: str = ""
    write_fd: int = -1
    last: Optional[SlurmJob] = None      # Slurm's newest answer
    final: Optional[SlurmJob] = None     # how it ended (None once ended: Slurm forgot it)
    ended: bool = False
    missing: int = 0
    reported: Optional[tuple] = None     # (state, reason, node) last written to the history
    watch: Optional["SlurmWatch"] = None

    def exit_status(self) -> tuple[Optional[int], Optional[int]]:
        return (self.final.exit_code, self.final.signal) if self.final else (None, None)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.untrack(self)
        super().close()


class SlurmUnclear(SlurmError):
    """Slurm answered something that says nothing certain about a job: asked again later."""


class SlurmWatch:
    def __init__(self, settings: Callable[[], SlurmSettings]):
        self.settings = settings
        self.log = get_logger()
        self.warning: Optional[str] = None  # why the last poll told nothing (for `status`); None when it did
        self._lock = threading.Lock()
        self._tracked: dict[str, SlurmChild] = {}  # by Slurm job id
        self._wake = threading.Event()
        self._last_warning = 0.0
        threading.Thread(target=self._poll_loop, name="slurm-poll", daemon=True).start()

    def track(self, name: str, job_id: str) -> SlurmChild:
        r, w = os.pipe2(os.O_CLOEXEC)
        child = SlurmChild(job=name, pid=0, start_time=time.time(), pidfd=r, slurm_job_id=job_id, write_fd=w,
                           watch=self)
        with self._lock:
            self._tracked[job_id] = child
        self.wake()
        return child

    def untrack(self, child: SlurmChild) -> None:
        with self._lock:
            self._tracked.pop(child.slurm_job_id, None)
            self._close_write(child)

    def child_of(self, name: str) -> Optional[SlurmChild]:
        with self._lock:
            return next((c for c in self._tracked.values() if c.job == name), None)

    def watched_ids(self) -> set[str]:
        with self._lock:
            return set(self._tracked)

    def wake(self) -> None:
        """Ask Slurm now, not at the end of the interval (after a submit, a cancel, an exit record)."""
        self._wake.set()

    def _close_write(self, child: SlurmChild) -> None:
        if child.write_fd >= 0:
            os.close(child.write_fd)
            child.write_fd = -1

    def _end(self, child: SlurmChild, final: Optional[SlurmJob]) -> None:
        """The job is over: the loop's selector sees EOF on the child's pidfd."""
        with self._lock:
            child.final, child.ended = final, True
            self._close_write(child)

    def _poll_loop(self) -> None:
        while True:
            self._wake.wait(self.settings().poll_s)
            self._wake.clear()
            try:
                self.poll_once()
            except SlurmUnavailable as err:
                self._unclear(f"Slurm does not answer ({err}); the jobs are left as they are and asked again")
            except Exception as exc:  # the poller must outlive any one bad answer
                self.log.exception("Slurm poll failed", error=repr(exc))

    def _unclear(self, warning: str) -> None:
        """Slurm said nothing we understand: no attempt ends, nothing is cancelled or charged;
        ``status`` shows the warning until a poll is understood again."""
        self.warning = warning
        if time.monotonic() - self._last_warning > 60:  # once a minute in the log, not every poll
            self._last_warning = time.monotonic()
            self.log.warning(warning)

    def poll_once(self) -> None:
        """One squeue call for every watched job; ended ones are looked up in detail and ended.
        Only a state Slurm itself reports ends an attempt: a job it says it does not know (gone
        from squeue, "Invalid job id"), or one in an end state. Any other failure is "try later"."""
        with self._lock:
            children = [c for c in self._tracked.values() if not c.ended]
        if not children:
            self.warning = None
            return
        timeout = self.settings().command_timeout_s
        try:
            seen = slurm.parse_squeue(slurm.run(slurm.squeue_args([c.slurm_job_id for c in children]), timeout,
                                                env=slurm.env_for_commands()))
        except SlurmUnavailable:
            raise
        except SlurmError as err:
            if not slurm.says_unknown_job(str(err)):
                self._unclear(f"Slurm's squeue answered what the daemon does not understand ({err}); the jobs "
                              "are left as they are and asked again")
                return
            seen = {}  # "Invalid job id specified": the only one asked about is gone
        try:
            for child in children:
                self._update(child, seen.get(child.slurm_job_id), timeout)
        except SlurmUnclear as err:
            self._unclear(f"{err}; the jobs are left as they are and asked again")
            return
        self.warning = None

    def _update(self, child: SlurmChild, job: Optional[SlurmJob], timeout: float) -> None:
        if job is None or not job.active:
            job = _details(child.slurm_job_id, timeout) or job
        if job is None:
            child.missing += 1
            if child.missing >= MISSING_POLLS:
                self._end(child, None)
            return
        child.missing = 0
        was_waiting = child.last is None or child.last.pending
        child.last = job
        if job.pending:  # the stall clock starts with the allocation, not with the submit
            child.start_time = time.time()
        elif was_waiting:
            child.start_time = min(job.start_time or time.time(), time.time())
        if not job.active:
            self._end(child, job)


def _details(job_id: str, timeout: float) -> Optional[SlurmJob]:
    """scontrol (exit code, node), then sacct where accounting exists; None: nobody knows the job."""
    env = slurm.env_for_commands()
    try:
        found = slurm.parse_scontrol(slurm.run(["scontrol", "show", "job", "-o", job_id], timeout, env=env))
        if found is not None:
            return found
    except SlurmUnavailable:
        raise
    except SlurmError as err:
        if not slurm.says_unknown_job(str(err)):
            raise SlurmUnclear(f"scontrol answered what the daemon does not understand ({err})") from None
    try:
        return slurm.parse_sacct(slurm.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o",
                                            "JobID,State,ExitCode,NodeList,Start"], timeout, env=env))
    except SlurmError:  # no accounting ("Slurm accounting storage is disabled"), or no sacct at all
        return None
