"""Slurm's commands as the daemon uses them, and what their answers mean for an attempt.

``sbatch`` submits one attempt, ``squeue`` (one call for every job the daemon watches) and
``scontrol show job`` say how it is doing, ``sacct`` is asked where accounting exists once
the controller has forgotten a job, ``scancel`` signals and cancels. Every call has a
deadline, and no call goes through a shell. ``outcome`` maps Slurm's end of a job onto the
daemon's causes; it is pure, and tested with a table (tests/unit/test_slurm.py).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

from supervisor.contract import ExitRecord
from supervisor.jobs.states import PREEMPTED_EXIT_CODE, Cause
from supervisor.process.classify import Classified
from supervisor.safefs import Identity, needs_switch

# Still in Slurm's hands: the attempt has an allocation, or waits for one. Anything else is an end.
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                           "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
                           "RESV_DEL_HOLD"})
NOT_READABLE_EXIT = 78  # the batch script's own exit when the node cannot read the plan (EX_CONFIG)
# sbatch/squeue failures that say nothing about the job itself: try again later.
_TRANSIENT = re.compile(r"Unable to contact slurm controller|Socket timed out|Zero Bytes were transmitted|"
                        r"temporarily unable|Communication connection failure|Connection refused|"
                        r"Slurm backup controller in standby mode|Transport endpoint", re.IGNORECASE)
_SQUEUE_FORMAT = "%i|%T|%r|%N|%S"
# Slurm's own words for "no such job" (squeue and scontrol): the one error that says a job is gone.
_UNKNOWN_JOB = re.compile(r"Invalid job id specified", re.IGNORECASE)


class SlurmError(OSError):
    """Slurm refused a request (a bad partition, a time limit over the partition's): not retried."""

    transient = False


class SlurmUnavailable(SlurmError):
    """The controller did not answer (down, overloaded, timed out): the launch is tried again later."""

    transient = True


@dataclass(frozen=True)
class SlurmJob:
    """What Slurm last said about one job."""

    job_id: str
    state: str                       # JobState: PENDING, RUNNING, COMPLETED, TIMEOUT, ...
    reason: str = ""                 # why it waits (Resources, Priority, ReqNodeNotAvail, ...)
    node: str = ""
    start_time: Optional[float] = None
    exit_code: Optional[int] = None  # of the batch script, once it ended
    signal: Optional[int] = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def pending(self) -> bool:
        return self.state == "PENDING"

    def describe(self) -> str:
        """``Slurm job 42: PENDING (Resources)`` / ``Slurm job 42: RUNNING on node7``."""
        text = f"Slurm job {self.job_id}: {self.state}"
        if self.pending and self.reason and self.reason != "None":
            text += f" ({self.reason})"
        if self.node and not self.pending:
            text += f" on {self.node}"
        return text


# -- running the commands ------------------------------------------------------------------
def run(argv: Sequence[str], timeout: float, *, input: Optional[str] = None, env: Optional[dict] = None,
        user: Optional[Identity] = None) -> str:
    """Run one Slurm command; its stdout. SlurmUnavailable when it does not answer in time or
    says the controller is unreachable, SlurmError when it refuses."""
    kwargs: dict[str, Any] = {}
    if needs_switch(user):
        assert user is not None
        kwargs.update(user=user.uid, group=user.gid, extra_groups=list(user.groups))
    # Found on the daemon's PATH: a job's environment (``env``) has the standard one only.
    exe = [shutil.which(argv[0]) or argv[0], *argv[1:]]
    try:
        done = subprocess.run(exe, input=input, capture_output=True, text=True, timeout=timeout,
                              env=env, stdin=None if input is not None else subprocess.DEVNULL, **kwargs)
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"{argv[0]} did not answer within {timeout:g}s") from None
    except FileNotFoundError:
        raise SlurmUnavailable(f"{argv[0]} not found on PATH") from None
    if done.returncode != 0:
        message = " ".join((done.stderr or done.stdout or f"exit {done.returncode}").split())[:500]
        cls = SlurmUnavailable if _TRANSIENT.search(message) else SlurmError
        raise cls(message if message.startswith(argv[0]) else f"{argv[0]}: {message}")
    return done.stdout


def says_unknown_job(message: str) -> bool:
    """Whether a failed squeue/scontrol says the job is unknown to Slurm (ended and forgotten)."""
    return bool(_UNKNOWN_JOB.search(message))


def submit_env(base: dict[str, str]) -> dict[str, str]:
    """The training's environment for sbatch: the daemon's own SLURM_* (if it runs inside an
    allocation) would be taken for the new job's options, so they are left out."""
    return {k: v for k, v in base.items() if not k.startswith("SLURM_") and not k.startswith("SBATCH_")}


def batch_script(python: str, plan: str, job: str, attempt: int) -> str:
    """The attempt's batch script: the same child entry point as a local attempt, exec'd so that
    the training is the batch shell that --signal=B: and scancel --batch reach."""
    q = shlex.quote
    return (
        "#!/bin/sh\n"
        f"# yolo-supervisor: attempt {attempt} of job {job}\n"
        f"if [ ! -r {q(plan)} ]; then\n"
        f"  echo \"yolo-supervisor: node $(hostname) cannot read {plan}: the daemon's home must be on a "
        "filesystem the compute nodes share, at the same path\" >&2\n"
        f"  exit {NOT_READABLE_EXIT}\n"
        "fi\n"
        f"exec {q(python)} -m supervisor.child.train {q(plan)}\n"
    )


def sbatch_args(*, name: str, log: str, workdir: str, signal_before_s: int, time_limit: Any,
                partition: Optional[str], gpus: int, cpus: Optional[int], mem: Optional[str],
                account: Optional[str], qos: Optional[str], extra: Sequence[str], comment: str) -> list[str]:
    """sbatch's argument list for one attempt (the script comes on stdin)."""
    args = ["sbatch", "--parsable", f"--job-name={name}", f"--output={log}", "--open-mode=append",
            f"--chdir={workdir}", f"--signal=B:TERM@{signal_before_s}", "--no-requeue", "--export=ALL",
            "--nodes=1", "--ntasks=1", f"--comment={comment}"]
    for flag, value in (("time", time_limit), ("partition", partition), ("cpus-per-task", cpus),
                        ("mem", mem), ("account", account), ("qos", qos)):
        if value is not None:
            args.append(f"--{flag}={value}")
    if gpus:
        args.append(f"--gpus={gpus}")
    return args + list(extra)


def parse_job_id(out: str) -> str:
    """``--parsable`` prints ``JOBID`` or ``JOBID;CLUSTER``."""
    job_id = out.strip().split(";", 1)[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id: {out.strip()[:200]!r}")
    return job_id


def squeue_args(job_ids: Sequence[str]) -> list[str]:
    return ["squeue", "--noheader", "--states=all", f"--format={_SQUEUE_FORMAT}", f"--jobs={','.join(job_ids)}"]


def parse_squeue(out: str) -> dict[str, SlurmJob]:
    """``squeue --format=%i|%T|%r|%N|%S`` lines, by job id."""
    jobs = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5 or not parts[0]:
            continue
        job_id, state, reason, node, start = parts
        state = state.split()[0] if state else "UNKNOWN"
        started = parse_time(start) if state not in ("PENDING", "CONFIGURING") else None
        jobs[job_id] = SlurmJob(job_id, state, reason, "" if node in ("", "(null)") else node, started)
    return jobs


def parse_scontrol(out: str) -> Optional[SlurmJob]:
    """``scontrol show job -o ID``: one line of Key=Value fields (values may hold spaces)."""
    fields: dict[str, str] = {}
    key = None
    for token in out.split():
        k, sep, v = token.partition("=")
        if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9:/_]*", k):
            key, fields[k] = k, v
        elif key is not None:
            fields[key] += " " + token
    if "JobId" not in fields or "JobState" not in fields:
        return None
    code, sig = parse_exit_code(fields.get("ExitCode", ""))
    node = fields.get("NodeList", "")
    return SlurmJob(fields["JobId"], fields["JobState"], fields.get("Reason", ""),
                    "" if node in ("", "(null)") else node, parse_time(fields.get("StartTime", "")), code, sig)


def parse_sacct(out: str) -> Optional[SlurmJob]:
    """``sacct -X -n -P -o JobID,State,ExitCode,NodeList,Start`` for one job."""
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 5 and parts[0].isdigit():
            code, sig = parse_exit_code(parts[2])
            state = parts[1].split()[0] if parts[1] else "UNKNOWN"  # "CANCELLED by 0"
            return SlurmJob(parts[0], state, "", parts[3] if parts[3] != "None assigned" else "",
                            parse_time(parts[4]), code, sig)
    return None


def parse_exit_code(text: str) -> tuple[Optional[int], Optional[int]]:
    """``75:0`` -> (75, None); ``0:9`` -> (None, 9): the batch script's exit code and signal."""
    m = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if not m:
        return None, None
    code, sig = int(m.group(1)), int(m.group(2))
    return (None, sig) if sig else (code, None)


def parse_time(text: str) -> Optional[float]:
    """Slurm's local ``2026-12-02T00:41:07``; None for ``N/A``, ``Unknown`` and the like."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


# -- what an ended Slurm job means ------------------------------------------------------------
def outcome(job: Optional[SlurmJob], local: Classified, record: Optional[ExitRecord], started: bool,
            by_daemon: bool, last_line: str = "") -> Classified:
    """The cause of an attempt that ran as Slurm job ``job``.

    ``local`` is what the exit status, exit record and log say (the same classification as
    a local attempt); ``record`` the child's exit record; ``started`` whether the child
    wrote anything into the daemon's home (its progress file or exit record); ``by_daemon``
    whether the daemon itself cancelled the job (a stop, a restart, a stall kill);
    ``last_line`` the attempt's last line of output, if any.
    """
    if job is None:  # forgotten by the controller and no accounting: the exit record decides
        return replace(local, detail=f"{local.detail} (Slurm no longer knows the job)")
    where = f"Slurm job {job.job_id}" + (f" on {job.node}" if job.node else "")
    saved = record is not None and record.exit_code == PREEMPTED_EXIT_CODE
    state = job.state
    if state in ("NODE_FAIL", "BOOT_FAIL"):
        return Classified(Cause.NODE_FAILURE, f"{where}: {state}: the node failed")
    if state == "OUT_OF_MEMORY":
        return Classified(Cause.HOST_OOM, f"{where}: OUT_OF_MEMORY (over its memory limit)")
    if state == "PREEMPTED":
        how = "after the notice save" if saved else "no save after the notice"
        return Classified(Cause.PREEMPTED, f"{where}: PREEMPTED by Slurm ({how})")
    if state in ("TIMEOUT", "DEADLINE"):
        if saved:
            return Classified(Cause.PREEMPTED, f"{where}: {state} after the notice save")
        return Classified(Cause.KILLED, f"{where}: {state} before the notice save finished (give the save "
                                        "more time: slurm.signal_before_s)")
    if state == "CANCELLED":
        if by_daemon and local.cause is Cause.COMPLETED and (record is None or record.exit_code != 0):
            # A job cancelled before it ran reports exit 0: that is not a finished training.
            return Classified(Cause.TERMINATED, f"{where}: cancelled by the daemon" +
                              ("" if started else " before it started"))
        if by_daemon:
            return replace(local, detail=f"{local.detail} ({where}: cancelled by the daemon)")
        return Classified(Cause.KILLED, f"{where}: CANCELLED outside the daemon (scancel)" +
                          (", after a save" if saved else ""))
    if state == "FAILED" and not started:
        return Classified(Cause.CONFIG_ERROR, _never_started(where, job, last_line))
    if state == "FAILED" and local.cause is Cause.PREEMPTED:  # the notice save: Slurm calls any exit != 0 FAILED
        return replace(local, detail=f"{local.detail} ({where}; exit 75, which Slurm records as FAILED)")
    return replace(local, detail=f"{local.detail} ({where}, Slurm state {state})")


def _never_started(where: str, job: SlurmJob, last_line: str) -> str:
    how = f"exit {job.exit_code}" if job.signal is None else f"signal {job.signal}"
    if job.reason and job.reason != "None":
        how += f", Slurm reason {job.reason}"  # JobLaunchFailure: it could not even open the log or folder
    if job.exit_code == NOT_READABLE_EXIT or not last_line:
        return (f"{where}: the node cannot read the attempt's plan ({how}; nothing written into the daemon's "
                "home): the home must be on a filesystem the compute nodes share, at the same path "
                "(README: On a Slurm cluster)")
    return (f"{where}: the training never started ({how}): {last_line[:300]}; the interpreter (slurm.python) "
            "and the daemon's home must be visible on the compute nodes at the same paths")


def env_for_commands() -> dict[str, str]:
    """squeue/scontrol/scancel: the daemon's environment, without SLURM_* of an enclosing job."""
    return submit_env(dict(os.environ))
