"""The job state machine: one table of (state, event) -> (new state, actions), as in NVRx.

The daemon names what happened (an ``On`` event) and ``Daemon.transition`` applies this table: the
new state, then the table's actions. A pair that is not in the table is a bug and raises
``IllegalTransition``. The restart policy (policy.py) decides an ended attempt's cause and budget
and so which ``ENDED_*`` event it was; where the job goes is decided here only.

The README's state diagram is generated from this table (``python -m supervisor.jobs.machine``), and
tests/unit/test_state_machine.py keeps the two equal. Every e2e and chaos test checks the moves
its daemons recorded against the table (tests/conftest.py: ``table_check``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum

from supervisor.jobs.states import JobState

S = JobState


class On(str, Enum):
    """What happened to a job."""

    # a launch (the loop decides, a worker prepares, the loop records)
    ATTEMPT_STARTED = "attempt_started"        # a child or a Slurm job was started and recorded
    ALLOCATION_WAITING = "allocation_waiting"  # Slurm says why the job still waits (the reason changes)
    FIRST_BATCH = "first_batch"                # the child trained its first batch
    FOUND_FINISHED = "found_finished"          # the checkpoint found at launch is a finished one
    LAUNCH_REFUSED = "launch_refused"          # env_file unreadable, spawn failed, stored spec invalid
    LAUNCH_ERROR = "launch_error"              # a launch step failed (a full disk, a worker past its deadline)
    PREFLIGHT_FAILED = "preflight_failed"      # the dataset or model is not there
    PREFLIGHT_PASSED = "preflight_passed"      # what a held job needs is there again
    DEVICES_UNHEALTHY = "devices_unhealthy"    # its GPUs failed a health check
    DEVICES_HEALTHY = "devices_healthy"        # its GPUs are healthy again
    MOVED_OFF_FAILED_GPUS = "moved_off_failed_gpus"  # on_gpu_failure: move found another free set
    # users
    STOP_REQUESTED = "stop_requested"
    RESTART_REQUESTED = "restart_requested"
    START_REQUESTED = "start_requested"
    EXTENDED = "extended"
    # the daemon's own watch
    STALLED = "stalled"                        # no progress for stall_timeout
    NO_OPEN_ATTEMPT = "no_open_attempt"        # a daemon start finds no attempt for a job with a process
    # an attempt ended; the policy's decision names which
    ENDED_COMPLETE = "ended_complete"
    ENDED_RESTART = "ended_restart"
    ENDED_FAIL = "ended_fail"
    ENDED_STOP = "ended_stop"
    ENDED_HOLD = "ended_hold"
    ENDED_REQUEUE = "ended_requeue"            # the stop a user's `restart` asked for


class Do(str, Enum):
    """What the daemon does on a move, after the new state is recorded."""

    SIGNAL_TERM = "signal_term"            # SIGTERM to every process of the job (the stop's intent is recorded)
    END_TRACKER_RUN = "end_tracker_run"    # the job's MLflow run ends with the job's state
    FORGET_HEALTH = "forget_health"        # a wait for the GPU memory to be released ends with the job


@dataclass(frozen=True)
class Move:
    to: JobState
    actions: tuple[Do, ...] = ()


class IllegalTransition(RuntimeError):
    """A (state, event) pair the table does not list: a bug in the daemon, never a user's error."""


_ENDS = (Do.END_TRACKER_RUN, Do.FORGET_HEALTH)  # entering stopped, failed or completed
_WAITING = (S.QUEUED, S.BACKOFF)                # a launch starts only from these
_LIVE = (S.STARTING, S.RUNNING)                 # a process that has not been asked to stop
_ENDING = (S.STARTING, S.RUNNING, S.STOPPING)   # an attempt can end in any of these


def _rows() -> list[tuple[tuple[JobState, ...], On, Move]]:
    """The table, by event: (from states, event, move)."""
    return [
        (_WAITING, On.ATTEMPT_STARTED, Move(S.STARTING)),
        ((S.STARTING,), On.ALLOCATION_WAITING, Move(S.STARTING)),
        ((S.STARTING,), On.FIRST_BATCH, Move(S.RUNNING)),
        (_WAITING, On.FOUND_FINISHED, Move(S.COMPLETED, _ENDS)),
        (_WAITING, On.LAUNCH_REFUSED, Move(S.FAILED, _ENDS)),
        (_WAITING, On.LAUNCH_ERROR, Move(S.BACKOFF)),
        (_WAITING, On.PREFLIGHT_FAILED, Move(S.HELD)),
        ((S.HELD,), On.PREFLIGHT_PASSED, Move(S.QUEUED)),
        (_WAITING, On.DEVICES_UNHEALTHY, Move(S.HELD)),
        ((S.HELD,), On.DEVICES_HEALTHY, Move(S.QUEUED)),
        ((S.HELD,), On.MOVED_OFF_FAILED_GPUS, Move(S.QUEUED)),
        (_LIVE, On.STOP_REQUESTED, Move(S.STOPPING, (Do.SIGNAL_TERM,))),
        ((S.QUEUED, S.BACKOFF, S.HELD), On.STOP_REQUESTED, Move(S.STOPPED, _ENDS)),
        (_LIVE, On.RESTART_REQUESTED, Move(S.STOPPING, (Do.SIGNAL_TERM,))),
        ((S.BACKOFF,), On.RESTART_REQUESTED, Move(S.BACKOFF)),  # the delay is skipped; a slot is still needed
        ((S.STOPPED, S.FAILED, S.HELD), On.RESTART_REQUESTED, Move(S.QUEUED)),
        ((S.STOPPED, S.FAILED, S.HELD), On.START_REQUESTED, Move(S.QUEUED)),
        ((S.COMPLETED, S.STOPPED, S.FAILED), On.EXTENDED, Move(S.QUEUED)),
        (_LIVE, On.STALLED, Move(S.STOPPING, (Do.SIGNAL_TERM,))),
        (_ENDING, On.NO_OPEN_ATTEMPT, Move(S.QUEUED)),
        (_ENDING, On.ENDED_COMPLETE, Move(S.COMPLETED, _ENDS)),
        (_ENDING, On.ENDED_RESTART, Move(S.BACKOFF)),
        (_ENDING, On.ENDED_FAIL, Move(S.FAILED, _ENDS)),
        (_ENDING, On.ENDED_STOP, Move(S.STOPPED, _ENDS)),
        (_ENDING, On.ENDED_HOLD, Move(S.HELD)),
        (_ENDING, On.ENDED_REQUEUE, Move(S.QUEUED)),
    ]


def _table() -> dict[tuple[JobState, On], Move]:
    table: dict[tuple[JobState, On], Move] = {}
    for states, on, move in _rows():
        for state in states:
            assert (state, on) not in table, f"({state.value}, {on.value}) listed twice"
            table[(state, on)] = move
    return table


TABLE = _table()


def move(state: JobState, on: On) -> Move:
    """Where ``on`` takes a job in ``state``; IllegalTransition when the table does not list it."""
    found = TABLE.get((state, on))
    if found is None:
        raise IllegalTransition(f"no transition from {state.value} on {on.value}")
    return found


def mermaid() -> str:
    """The table as a Mermaid state diagram (the README's): one arrow per (from, to, actions), labelled
    with its events and, after a slash, the actions."""
    arrows: dict[tuple[JobState, JobState, tuple[Do, ...]], list[str]] = {}
    for (state, on), found in TABLE.items():
        arrows.setdefault((state, found.to, found.actions), []).append(on.value)
    lines = ["stateDiagram-v2", "    [*] --> queued : submitted"]
    for (old, new, actions), events in arrows.items():
        does = f" / {', '.join(a.value for a in actions)}" if actions else ""
        lines.append(f"    {old.value} --> {new.value} : {', '.join(events)}{does}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(mermaid() + "\n")
