"""Job states and attempt causes.

The job's state (where it is in its life) and an attempt's cause (how one child
process ended) are separate values, as in pueue's TaskStatus/TaskResult.
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"
    HELD = "held"

    @property
    def is_final(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED)

    @property
    def has_process(self) -> bool:
        return self in (JobState.STARTING, JobState.RUNNING, JobState.STOPPING)


S = JobState

# The moves between states are the state machine's table: supervisor/jobs/machine.py.


class Cause(str, Enum):
    """Why an attempt's process ended."""

    COMPLETED = "completed"
    CUDA_OOM = "cuda_oom"
    HOST_OOM = "host_oom"
    KILLED = "killed"          # SIGKILL with no kernel OOM record
    TERMINATED = "terminated"  # died of SIGTERM without saving (not our handler)
    PREEMPTED = "preempted"    # our child caught SIGTERM, saved a resumable checkpoint, exited
    CONFIG_ERROR = "config_error"  # Ultralytics refused the arguments or the dataset: not retried
    SETUP_FAILED = "setup_failed"  # any other failure before the first batch (ESTALE, CUDA init, NCCL)
    DIVERGED = "diverged"          # Ultralytics gave up on a NaN/Inf loss: resuming would diverge again
    CRASHED = "crashed"
    STALLED = "stalled"        # the daemon killed it: no progress for stall_timeout
    STOPPED = "stopped"        # the daemon killed it on a user's stop/restart
    NODE_FAILURE = "node_failure"  # the machine under it failed (Slurm NODE_FAIL, BOOT_FAIL)

    @property
    def is_preemption(self) -> bool:
        """Causes that do not consume the crash budget: the job was not at fault."""
        return self in (Cause.TERMINATED, Cause.PREEMPTED, Cause.STOPPED, Cause.NODE_FAILURE)


# Exit status the training child uses after catching SIGTERM and saving a
# resumable checkpoint (EX_TEMPFAIL: "try again later").
PREEMPTED_EXIT_CODE = 75
