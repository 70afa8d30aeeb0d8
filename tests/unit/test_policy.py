"""The restart policy, as tables of cases: pure function, no I/O."""

import pytest

from supervisor.jobs.spec import parse_spec
from supervisor.jobs.states import Cause
from supervisor.policy import DIVERGED_REASON, Action, AttemptEnd, Budget, backoff_delay, decide


def spec(**overrides):
    data = {"name": "j", "train": {"model": "yolov8n.yaml", "data": "d.yaml", "epochs": 10, "batch": 16},
            "restart": {"max_restarts": 3, "max_no_progress": 2,
                        "backoff": {"initial": 2, "max": 20, "factor": 3}}}
    data.update(overrides)
    return parse_spec(data)


def end(cause, before=3, after=4, **kw):
    return AttemptEnd(cause=cause, epochs_before=before, epochs_after=after, **kw)


@pytest.mark.parametrize("level, expected", [(0, 2), (1, 6), (2, 18), (3, 20), (10, 20)])
def test_backoff_is_exponential_with_a_cap(level, expected):
    assert backoff_delay(spec(), level) == expected


CASES = [
    # (cause, budget, end kwargs, action, budget after)
    (Cause.COMPLETED, Budget(), {}, Action.COMPLETE, Budget()),
    (Cause.KILLED, Budget(), {"finished_checkpoint": True}, Action.COMPLETE, Budget()),
    (Cause.KILLED, Budget(), {"after": 10}, Action.COMPLETE, Budget()),
    (Cause.CONFIG_ERROR, Budget(), {"after": None, "before": 0}, Action.FAIL, Budget()),
    (Cause.KILLED, Budget(), {}, Action.RESTART, Budget(1, 0, 1)),
    (Cause.CRASHED, Budget(2, 0, 2), {}, Action.RESTART, Budget(3, 0, 1)),
    (Cause.CRASHED, Budget(3, 0, 2), {}, Action.FAIL, Budget(3, 0, 2)),
    (Cause.CUDA_OOM, Budget(1, 0, 1), {}, Action.RESTART, Budget(2, 0, 1)),
    # preemption does not consume the crash budget, even when it is spent
    (Cause.PREEMPTED, Budget(3, 0, 0), {}, Action.RESTART, Budget(3, 0, 1)),
    (Cause.TERMINATED, Budget(3, 0, 0), {}, Action.RESTART, Budget(3, 0, 1)),
    # a failed node (Slurm NODE_FAIL) is not the job's fault either
    (Cause.NODE_FAILURE, Budget(3, 0, 0), {}, Action.RESTART, Budget(3, 0, 1)),
    (Cause.NODE_FAILURE, Budget(1, 1, 1), {"after": 3}, Action.RESTART, Budget(1, 1, 2, preempt_streak=1)),
    # a Slurm host OOM is charged like a local one
    (Cause.HOST_OOM, Budget(3, 0, 0), {}, Action.FAIL, Budget(3, 0, 0)),
    # no progress: first time restarts, second time in a row fails
    (Cause.KILLED, Budget(0, 0, 0), {"after": 3}, Action.RESTART, Budget(1, 1, 1)),
    (Cause.KILLED, Budget(1, 1, 1), {"after": 3}, Action.FAIL, Budget(1, 2, 1)),
    (Cause.STALLED, Budget(1, 1, 1), {"after": None}, Action.FAIL, Budget(1, 2, 1)),
    # preemption without progress neither fails the job nor grows the streak, but grows its own
    (Cause.PREEMPTED, Budget(1, 1, 1), {"after": 3}, Action.RESTART, Budget(1, 1, 2, preempt_streak=1)),
    # ... and the 10th in a row holds the job (the default max_preemptions_without_progress)
    (Cause.PREEMPTED, Budget(0, 0, 5, preempt_streak=9), {"after": 3}, Action.HOLD, Budget(0, 0, 5, 0, 10)),
    (Cause.TERMINATED, Budget(0, 0, 5, preempt_streak=8), {"after": 3}, Action.RESTART,
     Budget(0, 0, 6, 0, 9)),
    # progress, or an attempt that was not a preemption, ends the row
    (Cause.PREEMPTED, Budget(0, 0, 5, preempt_streak=9), {}, Action.RESTART, Budget(0, 0, 1)),
    (Cause.KILLED, Budget(0, 0, 0, preempt_streak=9), {"after": 3}, Action.RESTART, Budget(1, 1, 1)),
    # a failure before the first batch that is not the configuration: retried with backoff, charged to
    # neither the crash budget nor the no-progress streak, up to max_setup_failures (3) in a row
    (Cause.SETUP_FAILED, Budget(3, 1, 0), {"after": None, "before": 0}, Action.RESTART, Budget(3, 1, 1, 1)),
    (Cause.SETUP_FAILED, Budget(0, 0, 2, 2), {"after": None, "before": 0}, Action.RESTART, Budget(0, 0, 3, 3)),
    (Cause.SETUP_FAILED, Budget(0, 0, 3, 3), {"after": None, "before": 0}, Action.FAIL, Budget(0, 0, 3, 4)),
    # an attempt that got past its setup ends the row of setup failures
    (Cause.KILLED, Budget(0, 0, 0, 2), {}, Action.RESTART, Budget(1, 0, 1)),
    # a divergence: held, whatever the budgets say (resuming the same state diverges again)
    (Cause.DIVERGED, Budget(0, 0, 0), {}, Action.HOLD, Budget(0, 0, 0)),
    (Cause.DIVERGED, Budget(5, 5, 5, 2, 3), {"after": 3}, Action.HOLD, Budget(5, 5, 5)),
    # each decision that ends a row resets the other rows (issue 25: mutants that survived)
    (Cause.SETUP_FAILED, Budget(0, 0, 0, 0, 4), {"after": None, "before": 0}, Action.RESTART, Budget(0, 0, 1, 1, 0)),
    (Cause.PREEMPTED, Budget(0, 0, 5, 2, 9), {"after": 3}, Action.HOLD, Budget(0, 0, 5, 0, 10)),
    (Cause.CRASHED, Budget(3, 0, 2, 2, 4), {}, Action.FAIL, Budget(3, 0, 2, 0, 0)),
    (Cause.KILLED, Budget(1, 1, 1, 2, 4), {"after": 3}, Action.FAIL, Budget(1, 2, 1, 0, 0)),
    # user stop and unhealthy devices
    (Cause.STOPPED, Budget(), {"user_stop": True}, Action.STOP, Budget()),
    (Cause.KILLED, Budget(), {"devices_unhealthy": True}, Action.HOLD, Budget()),
]


@pytest.mark.parametrize("cause, budget, kw, action, after", CASES)
def test_decision_table(cause, budget, kw, action, after):
    d = decide(spec(), budget, end(cause, **kw))
    assert d.action is action, d.reason
    assert d.budget == after


def test_backoff_resets_after_progress_and_grows_without():
    progressed = decide(spec(), Budget(1, 0, 3), end(Cause.KILLED, before=3, after=5))
    assert progressed.delay_s == 0 and progressed.budget.backoff_level == 1  # at once; level reset to 0
    again = decide(spec(), progressed.budget, end(Cause.KILLED, before=5, after=5))
    assert again.delay_s == 2 * 3  # the next attempt made no progress: backoff from level 1 (factor 3)
    stuck = decide(spec(restart={"max_no_progress": 5, "backoff": {"initial": 2, "max": 20, "factor": 3}}),
                   Budget(1, 1, 2), end(Cause.KILLED, before=3, after=3))
    assert stuck.delay_s == 18


def test_preemption_with_progress_restarts_at_once():
    assert decide(spec(), Budget(), end(Cause.PREEMPTED)).delay_s == 0


def test_failure_reasons_are_recorded():
    spent = decide(spec(), Budget(3, 0, 0), end(Cause.CRASHED))
    assert "restart budget spent" in spent.reason and "crashed" in spent.reason
    stuck = decide(spec(), Budget(1, 1, 0), end(Cause.KILLED, after=3))
    assert "no progress" in stuck.reason


@pytest.mark.parametrize("batch, expected", [(16, 8), (5, 2), (3, 2), (2, None)])
def test_reduce_batch_on_cuda_oom_down_to_the_floor(batch, expected):
    s = spec(on_oom="reduce_batch", min_batch=2)
    d = decide(s, Budget(), end(Cause.CUDA_OOM, batch=batch))
    assert d.action is Action.RESTART
    assert d.new_batch == expected


def test_reduce_batch_only_for_cuda_oom_and_only_when_asked():
    assert decide(spec(on_oom="reduce_batch"), Budget(), end(Cause.HOST_OOM, batch=16)).new_batch is None
    assert decide(spec(), Budget(), end(Cause.CUDA_OOM, batch=16)).new_batch is None


def test_every_decision_is_an_event_the_table_takes_from_every_state_an_attempt_ends_in():
    # An attempt ends from starting, running or stopping; the daemon applies the machine's move for
    # ending_event(...) through transition(), which refuses a pair the table does not list.
    from supervisor.jobs.machine import move
    from supervisor.jobs.states import JobState
    from supervisor.policy import Action, ending_event

    for old in (JobState.STARTING, JobState.RUNNING, JobState.STOPPING):
        for action in Action:
            for restart in (False, True):
                move(old, ending_event(action, restart))  # raises IllegalTransition when missing


def test_a_setup_failure_that_ends_the_job_names_the_last_error():
    d = decide(spec(), Budget(0, 0, 3, 3), end(Cause.SETUP_FAILED, before=0, after=None,
                                              detail="failed before the first batch: OSError: [Errno 116] Stale file handle"))
    assert d.action is Action.FAIL
    assert "setup failed 4 times in a row" in d.reason and "Stale file handle" in d.reason


def test_setup_failures_wait_with_backoff():
    first = decide(spec(), Budget(), end(Cause.SETUP_FAILED, before=0, after=None))
    second = decide(spec(), first.budget, end(Cause.SETUP_FAILED, before=0, after=None))
    assert (first.delay_s, second.delay_s) == (2, 6)


def test_max_setup_failures_is_the_job_files():
    s = spec(restart={"max_setup_failures": 0})
    assert decide(s, Budget(), end(Cause.SETUP_FAILED, before=0, after=None)).action is Action.FAIL


@pytest.mark.parametrize("on_slurm, words", [
    (True, ["slurm.time", "checkpoint_every (10m)"]),
    (False, ["SIGTERM soon after it starts"]),
])
def test_a_preemption_loop_is_held_with_what_to_change(on_slurm, words):
    s = spec(restart={"max_preemptions_without_progress": 2})
    d = decide(s, Budget(preempt_streak=1), end(Cause.PREEMPTED, before=0, after=None, on_slurm=on_slurm))
    assert d.action is Action.HOLD and "preempted 2 times in a row without progress" in d.reason
    assert all(w in d.reason for w in words), d.reason


@pytest.mark.parametrize("after, epoch", [(None, 0), (3, 3)])
def test_a_preemption_loop_reason_says_where_the_job_stands_and_what_to_do(after, epoch):
    s = spec(restart={"max_preemptions_without_progress": 2})
    d = decide(s, Budget(preempt_streak=1), end(Cause.PREEMPTED, before=3 if after else 0, after=after))
    assert d.reason == (f"preempted 2 times in a row without progress (epoch {epoch}): something sends the job "
                        "SIGTERM soon after it starts (see `yolo-supervisorctl events` for who); "
                        "then `yolo-supervisorctl start`")


def test_only_a_person_lifts_a_divergence_or_a_preemption_loop():
    from supervisor.policy import DIVERGED_REASON, held_until_start

    assert held_until_start(spec(), DIVERGED_REASON, 0)
    assert held_until_start(spec(), "preempted 10 times ...", 10)
    assert not held_until_start(spec(), "devices unhealthy: GPU 0: XID 79", 0)


REASONS = [
    # (cause, budget, end kwargs, the reason the history shows, budget after)
    (Cause.COMPLETED, Budget(), {}, "training finished", Budget()),
    (Cause.KILLED, Budget(), {"after": 10}, "all 10 epochs trained; final evaluation interrupted", Budget()),
    (Cause.STOPPED, Budget(), {"user_stop": True}, "stopped by request", Budget()),
    (Cause.CONFIG_ERROR, Budget(), {"after": None, "before": 0},
     "configuration error: not retried (fix the job and start it again)", Budget()),
    (Cause.KILLED, Budget(), {"devices_unhealthy": True}, "devices unhealthy", Budget()),
    (Cause.CRASHED, Budget(3, 1, 2), {"after": 3}, "restart budget spent: 3 restarts used, last cause crashed",
     Budget(3, 2, 2)),
    (Cause.KILLED, Budget(1, 1, 1), {"after": 3}, "no progress: 2 attempts in a row ended at epoch 3 (last cause killed)",
     Budget(1, 2, 1)),
    (Cause.STALLED, Budget(1, 1, 1), {"after": None},
     "no progress: 2 attempts in a row ended at epoch 0 (last cause stalled)", Budget(1, 2, 1)),
    (Cause.KILLED, Budget(), {}, "killed: restart 1 of 3", Budget(1, 0, 1)),
    (Cause.PREEMPTED, Budget(2, 0, 0), {}, "preempted: restart not charged", Budget(2, 0, 1)),
    (Cause.DIVERGED, Budget(), {}, DIVERGED_REASON, Budget()),
    (Cause.SETUP_FAILED, Budget(), {"after": None, "before": 0}, "setup_failed: retry 1 of 3", Budget(0, 0, 1, 1)),
]


@pytest.mark.parametrize("cause, budget, kw, reason, after", REASONS)
def test_each_decision_says_why(cause, budget, kw, reason, after):
    d = decide(spec(), budget, end(cause, **kw))
    assert (d.reason, d.budget) == (reason, after)


def test_a_reduced_batch_is_in_the_reason():
    d = decide(spec(on_oom="reduce_batch"), Budget(), end(Cause.CUDA_OOM, batch=16))
    assert d.reason == "cuda_oom: restart 1 of 3; batch 16 -> 8" and d.new_batch == 8
    plain = decide(spec(), Budget(), end(Cause.CUDA_OOM, batch=16))
    assert plain.reason == "cuda_oom: restart 1 of 3" and plain.new_batch is None


def test_a_stop_that_a_restart_asked_for_queues_the_job_again():
    from supervisor.jobs.machine import move
    from supervisor.jobs.states import JobState
    from supervisor.policy import ending_event

    def after(action, restart):
        return move(JobState.STOPPING, ending_event(action, restart_requested=restart)).to

    assert after(Action.STOP, True) is JobState.QUEUED
    assert after(Action.STOP, False) is JobState.STOPPED
    assert after(Action.RESTART, True) is JobState.BACKOFF
    assert after(Action.FAIL, False) is JobState.FAILED
