"""The restart policy: one pure function from (job, how an attempt ended, now) to a decision.

No I/O, no clock reads, no logging: the daemon gathers the facts, calls
``decide`` and carries out what it returns. That makes every rule here a row
in a table test (tests/unit/test_policy.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Optional

from supervisor.jobs.spec import JobSpec
from supervisor.jobs.machine import On
from supervisor.jobs.states import Cause


class Action(str, Enum):
    COMPLETE = "complete"  # the training finished: nothing to restart
    RESTART = "restart"    # relaunch with resume after ``delay_s``
    FAIL = "fail"          # give up; ``reason`` says why
    STOP = "stop"          # a user asked for the stop: stay stopped
    HOLD = "hold"          # devices unhealthy: wait for them, do not restart


@dataclass(frozen=True)
class Budget:
    """Counters the policy reads and updates; persisted with the job."""

    crash_restarts: int = 0       # restarts charged to the crash budget
    no_progress_streak: int = 0   # consecutive attempts that did not advance the checkpoint
    backoff_level: int = 0        # exponent of the next backoff delay
    setup_failures: int = 0       # consecutive attempts that failed before their first batch (setup_failed)
    preempt_streak: int = 0       # consecutive preempted attempts that did not advance the checkpoint


@dataclass(frozen=True)
class AttemptEnd:
    """The facts about one ended attempt, gathered by the daemon."""

    cause: Cause
    epochs_before: int            # epochs completed in the checkpoint the attempt started from
    epochs_after: Optional[int]   # epochs completed in the best verified checkpoint now (None: none)
    finished_checkpoint: bool = False  # last.pt is stripped (epoch -1): Ultralytics finished
    user_stop: bool = False            # the daemon killed it because a user said stop/restart
    devices_unhealthy: bool = False    # a GPU probe says the job's devices are not usable
    batch: Optional[int] = None        # current batch size (for on_oom: reduce_batch)
    # Training done into the next epoch, in images (not batches: a resume with a halved batch numbers
    # the same images with twice the batches), in the state started from and in the best one now.
    images_before: int = 0
    images_after: int = 0
    detail: str = ""                   # the classified one-line reason (the error line of a setup failure)
    on_slurm: bool = False             # attempts are Slurm jobs: a preemption loop means a short allocation

    @property
    def progressed(self) -> bool:
        """The verified state moved forward: a new epoch, or further into one (a mid-epoch save)."""
        return self.epochs_after is not None and (
            (self.epochs_after, self.images_after) > (self.epochs_before, self.images_before))


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    budget: Budget
    delay_s: float = 0.0
    new_batch: Optional[int] = None  # set when on_oom: reduce_batch lowers the batch


def backoff_delay(spec: JobSpec, level: int) -> float:
    """initial * factor**level, capped at max."""
    b = spec.restart.backoff
    return min(b.max, b.initial * (b.factor ** level))


def decide(spec: JobSpec, budget: Budget, end: AttemptEnd) -> Decision:
    """What to do after an attempt ended."""
    if end.cause is Cause.COMPLETED or end.finished_checkpoint:
        return Decision(Action.COMPLETE, "training finished", budget)
    if end.epochs_after is not None and end.epochs_after >= spec.epochs:
        # Every epoch is in the checkpoint; only Ultralytics' final evaluation was cut off.
        return Decision(Action.COMPLETE, f"all {spec.epochs} epochs trained; final evaluation interrupted", budget)
    if end.user_stop:
        return Decision(Action.STOP, "stopped by request", budget)
    if end.cause is Cause.CONFIG_ERROR:
        return Decision(Action.FAIL, "configuration error: not retried (fix the job and start it again)", budget)
    if end.devices_unhealthy:
        return Decision(Action.HOLD, "devices unhealthy", budget)
    if end.cause is Cause.DIVERGED:
        return Decision(Action.HOLD, DIVERGED_REASON, replace(budget, setup_failures=0, preempt_streak=0))
    if end.cause is Cause.SETUP_FAILED:
        return _retry_setup_or_fail(spec, budget, end)
    return _restart_or_fail(spec, budget, end)


DIVERGED_REASON = ("diverged: the loss stayed NaN/Inf after Ultralytics' own recoveries (a resume from the same "
                   "state would diverge again); `yolo-supervisorctl start` resumes from the newest state whose "
                   "weights are finite")


def _retry_setup_or_fail(spec: JobSpec, budget: Budget, end: AttemptEnd) -> Decision:
    """A failure before the first batch that is not a configuration error: retried with backoff up to
    ``max_setup_failures`` in a row, charged to neither the crash budget nor the no-progress streak."""
    failures = budget.setup_failures + 1
    after = replace(budget, setup_failures=failures, preempt_streak=0, backoff_level=budget.backoff_level + 1)
    if failures > spec.restart.max_setup_failures:
        return Decision(Action.FAIL, f"setup failed {failures} times in a row before the first batch; "
                                     f"last error: {end.detail}", replace(after, backoff_level=budget.backoff_level))
    return Decision(Action.RESTART, f"setup_failed: retry {failures} of {spec.restart.max_setup_failures}",
                    after, delay_s=backoff_delay(spec, budget.backoff_level))


def held_until_start(spec: JobSpec, state_reason: Optional[str], preempt_streak: int) -> bool:
    """A hold only a person can lift (``start``): a divergence, or a preemption loop; not a device hold."""
    diverged = (state_reason or "").startswith(DIVERGED_REASON.split(":", 1)[0] + ":")
    return diverged or preempt_streak >= spec.restart.max_preemptions_without_progress


def _preemption_loop_reason(spec: JobSpec, end: AttemptEnd, streak: int) -> str:
    where = (f"each Slurm allocation ends before a checkpoint: its time (slurm.time) is shorter than the setup "
             f"plus checkpoint_every ({spec.checkpoint_every}); raise slurm.time or lower checkpoint_every"
             if end.on_slurm else
             "something sends the job SIGTERM soon after it starts (see `yolo-supervisorctl events` for who)")
    return (f"preempted {streak} times in a row without progress (epoch {end.epochs_after or 0}): {where}; "
            f"then `yolo-supervisorctl start`")


def _restart_or_fail(spec: JobSpec, budget: Budget, end: AttemptEnd) -> Decision:
    progressed = end.progressed
    charged = not end.cause.is_preemption
    # A preemption is not the job's fault: it neither charges nor extends the no-progress streak.
    streak = 0 if progressed else budget.no_progress_streak + (1 if charged else 0)
    crashes = budget.crash_restarts + (1 if charged else 0)
    # But preemptions that never let the job save loop for ever: they have a streak of their own.
    preempted = 0 if progressed or charged else budget.preempt_streak + 1
    if preempted >= spec.restart.max_preemptions_without_progress:
        return Decision(Action.HOLD, _preemption_loop_reason(spec, end, preempted),
                        replace(budget, setup_failures=0, preempt_streak=preempted))
    if charged and crashes > spec.restart.max_restarts:
        return Decision(
            Action.FAIL,
            f"restart budget spent: {spec.restart.max_restarts} restarts used, last cause {end.cause.value}",
            replace(budget, crash_restarts=crashes - 1, no_progress_streak=streak, setup_failures=0,
                    preempt_streak=0),
        )
    if charged and streak >= spec.restart.max_no_progress:
        return Decision(
            Action.FAIL,
            f"no progress: {streak} attempts in a row ended at epoch {end.epochs_after or 0} "
            f"(last cause {end.cause.value})",
            replace(budget, crash_restarts=crashes - 1, no_progress_streak=streak, setup_failures=0,
                    preempt_streak=0),
        )
    # Progress resets the backoff: a job that crashes once a day should not wait 5 minutes. And an
    # attempt that moved the verified state forward restarts at once, whatever ended it: the wait
    # exists to break crash loops, and a loop that makes progress is not one (a shell `until` loop
    # restarts within a second; the daemon must not be slower on the common SIGKILL).
    level = 0 if progressed else budget.backoff_level
    delay = 0.0 if progressed else backoff_delay(spec, level)
    new_batch = _reduced_batch(spec, end)
    reason = f"{end.cause.value}: restart {crashes if charged else 'not charged'}"
    if charged:
        reason += f" of {spec.restart.max_restarts}"
    if new_batch is not None:
        reason += f"; batch {end.batch} -> {new_batch}"
    return Decision(
        Action.RESTART,
        reason,
        Budget(crash_restarts=crashes, no_progress_streak=streak, backoff_level=level + 1, preempt_streak=preempted),
        delay_s=delay,
        new_batch=new_batch,
    )


def _reduced_batch(spec: JobSpec, end: AttemptEnd) -> Optional[int]:
    """Halve the batch after a CUDA OOM when the job asks for it, down to min_batch."""
    if spec.on_oom != "reduce_batch" or end.cause is not Cause.CUDA_OOM or not end.batch:
        return None
    if end.batch <= spec.min_batch:
        return None
    return max(spec.min_batch, end.batch // 2)


# Which event an ended attempt is, by the decision: the state machine (jobs/machine.py) says where
# each one takes the job. One table, not two.
ACTION_EVENTS: dict[Action, On] = {
    Action.COMPLETE: On.ENDED_COMPLETE, Action.FAIL: On.ENDED_FAIL, Action.STOP: On.ENDED_STOP,
    Action.HOLD: On.ENDED_HOLD, Action.RESTART: On.ENDED_RESTART,
}


def ending_event(action: Action, restart_requested: bool) -> On:
    """The state machine's event for an ended attempt: a stop that a user's ``restart`` asked for
    queues the job again."""
    if action is Action.STOP and restart_requested:
        return On.ENDED_REQUEUE
    return ACTION_EVENTS[action]
