"""Goodput accounting and training rate: plain tables of cases, no daemon."""

from dataclasses import dataclass
from typing import Optional

import pytest

from supervisor.contract import Progress, from_json
from supervisor.observe.goodput import epochs_trained, goodput
from supervisor.observe.rate import training_rate
from supervisor.store import AttemptRecord, JobRecord


def job(state: str, created: float = 0.0, updated: Optional[float] = None) -> JobRecord:
    return JobRecord(name="j", spec_yaml="", source=None, state=state, state_reason=None, created_at=created,
                     updated_at=created if updated is None else updated, owner_uid=None, owner_gid=None,
                     run_dir=None, pid=None, pid_start_time=None, attempts=0, crash_restarts=0,
                     no_progress_streak=0, backoff_level=0, next_start_at=None, epochs_done=0, last_cause=None,
                     batch_override=None)


def att(n: int, start: float, first: Optional[float], end: Optional[float], cause: Optional[str],
        before: int = 0, after: Optional[int] = None, reached: Optional[int] = None) -> AttemptRecord:
    return AttemptRecord(id=n, job="j", number=n, started_at=start, ended_at=end, pid=1, pid_start_time=0.0,
                         exit_code=None, signal=None, cause=cause, detail=None, epochs_before=before,
                         epochs_after=after, resumed_from=None, first_batch_at=first, epochs_reached=reached)


@dataclass
class Case:
    id: str
    state: str
    attempts: list
    now: float
    wall: float
    startup: float
    training: float
    down: float
    paused: float
    redone: int
    restarts: dict
    down_after: list  # per attempt


CASES = [
    Case("queued, nothing started", "queued", [], now=30, wall=30, startup=30, training=0, down=0, paused=0,
         redone=0, restarts={}, down_after=[]),
    Case("first attempt training now", "running", [att(1, 10, 25, None, None)], now=100,
         wall=100, startup=25, training=75, down=0, paused=0, redone=0, restarts={}, down_after=[0]),
    Case("clean run", "completed", [att(1, 10, 20, 110, "completed", after=4)], now=500,
         wall=110, startup=20, training=90, down=0, paused=0, redone=0, restarts={}, down_after=[0]),
    # killed at 100 after 2 epochs; backoff + setup until the next first batch at 130
    Case("one kill, resumed", "completed",
         [att(1, 0, 10, 100, "killed", after=2, reached=2), att(2, 110, 130, 200, "completed", before=2, after=4)],
         now=999, wall=200, startup=10, training=90 + 70, down=30, paused=0, redone=0, restarts={"killed": 1},
         down_after=[30, 0]),
    # killed after epoch 3's training pass but before its save: resumes from 2, trains epoch 3 again
    Case("kill during validation redoes an epoch", "completed",
         [att(1, 0, 10, 100, "killed", after=2, reached=3), att(2, 105, 120, 200, "completed", before=2, after=4)],
         now=999, wall=200, startup=10, training=90 + 80, down=20, paused=0, redone=1, restarts={"killed": 1},
         down_after=[20, 0]),
    # the restarted attempt dies before training: the down time runs on to attempt 3's first batch
    Case("a restart that never trained", "running",
         [att(1, 0, 10, 100, "host_oom", after=2, reached=2), att(2, 105, None, 120, "crashed", before=2, after=2),
          att(3, 125, 140, None, None, before=2)],
         now=200, wall=200, startup=10, training=90 + 60, down=40, paused=0, redone=0,
         restarts={"crashed": 1, "host_oom": 1}, down_after=[20, 20, 0]),
    Case("in backoff now: the gap grows", "backoff", [att(1, 0, 10, 100, "killed", after=1, reached=1)],
         now=150, wall=150, startup=10, training=90, down=50, paused=0, redone=0, restarts={}, down_after=[50]),
    Case("failed: the clock stops at the last end", "failed",
         [att(1, 0, 10, 100, "crashed"), att(2, 110, 120, 130, "crashed")], now=10_000,
         wall=130, startup=10, training=100, down=20, paused=0, redone=0, restarts={"crashed": 1},
         down_after=[20, 0]),
    Case("a user's stop and start is paused, not down", "running",
         [att(1, 0, 10, 100, "stopped", after=2, reached=2), att(2, 400, 420, None, None, before=2)],
         now=500, wall=500, startup=10, training=90 + 80, down=0, paused=320, redone=0,
         restarts={"stopped": 1}, down_after=[0, 0]),
    Case("stopped by a user: paused until now", "stopped", [att(1, 0, 10, 100, "stopped", after=2)],
         now=160, wall=160, startup=10, training=90, down=0, paused=60, redone=0, restarts={}, down_after=[0]),
    Case("died before any batch: setup time until the death, then down", "running",
         [att(1, 5, None, 50, "cuda_oom"), att(2, 60, 70, None, None)], now=100,
         wall=100, startup=50, training=30, down=20, paused=0, redone=0, restarts={"cuda_oom": 1},
         down_after=[20, 0]),
    # a truncated last.pt: attempt 2 resumes from the verified copy of epoch 3 although attempt 1 reached 5,
    # and is killed after epoch 4 (it redid epoch 4); attempt 3 resumes from 4 and redoes epoch 5.
    Case("older checkpoint restored, then another kill", "completed",
         [att(1, 0, 10, 100, "killed", after=5, reached=5),
          att(2, 100, 110, 150, "killed", before=3, after=4, reached=4),
          att(3, 150, 160, 200, "completed", before=4, after=6, reached=6)],
         now=999, wall=200, startup=10, training=90 + 40 + 40, down=20, paused=0, redone=2,
         restarts={"killed": 2}, down_after=[10, 10, 0]),
    Case("first batch stamped before the start (clock step) never overlaps", "completed",
         [att(1, 0, 10, 100, "killed"), att(2, 110, 105, 200, "completed")], now=999,
         wall=200, startup=10, training=90 + 90, down=10, paused=0, redone=0, restarts={"killed": 1},
         down_after=[10, 0]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_goodput_table(case: Case):
    g = goodput(job(case.state), case.attempts, case.now)
    got = (g.wall_s, g.startup_s, g.training_s, g.down_s, g.paused_s, g.epochs_redone, g.restarts_by_cause,
           [a.down_after_s for a in g.attempts])
    assert got == (case.wall, case.startup, case.training, case.down, case.paused, case.redone, case.restarts,
                   case.down_after)
    # the segments tile the wall time: contiguous, in order, nothing counted twice
    assert sum(s.seconds for s in g.segments) == pytest.approx(g.wall_s)
    for a, b in zip(g.segments, g.segments[1:]):
        assert a.end == b.start
    assert g.restarts == max(0, len(case.attempts) - 1)


def test_interruptions_say_where_the_curves_resume():
    g = goodput(job("backoff"), [
        att(1, 0, 10, 100, "killed", after=2, reached=3),
        att(2, 105, 120, 200, "stopped", before=2, after=4, reached=4),
        att(3, 300, 310, 400, "preempted", before=4, after=5, reached=5),
    ], now=450)
    rows = [(i.attempt, i.cause, i.resumed_epoch, i.resumed, i.gap_kind, i.gap_s, i.epochs_redone)
            for i in g.interruptions]
    assert rows == [(1, "killed", 2, True, "down", 20, 1),
                    (2, "stopped", 4, True, "paused", 110, 0),
                    (3, "preempted", 5, False, "down", 50, 0)]  # not resumed yet: where it will resume
    assert g.summary()["restarts_by_cause"] == {"killed": 1, "stopped": 1}


def test_completed_attempts_are_not_interruptions_and_json_is_plain():
    g = goodput(job("completed"), [att(1, 0, 1, 9, "completed", after=3)], now=20)
    assert g.interruptions == ()
    d = g.to_dict()
    assert d["training_fraction"] == round(8 / 9, 4) and d["segments"][-1]["kind"] == "training"


@pytest.mark.parametrize("progress,trained", [
    ({}, 0),
    ({"epoch": 1, "phase": "training", "batch": 3}, 0),
    ({"epoch": 3, "phase": "training"}, 2),
    ({"epoch": 3, "phase": "validating"}, 3),           # training pass done, not saved yet
    ({"epoch": 3, "phase": "epoch_end", "saved_epochs_done": 3}, 3),
    ({"epoch": 4, "phase": "saving_for_preemption", "saved_epochs_done": 3}, 3),
    ({"epoch": 4, "phase": "finished", "saved_epochs_done": 4}, 4),
    ({"epoch": True, "phase": "validating"}, 0),         # garbage is ignored
])
def test_epochs_trained_from_progress(progress, trained):
    assert epochs_trained(from_json(Progress, progress)) == trained


@pytest.mark.parametrize("progress,epochs,now,bps,epoch_s,eta", [
    # 10 of 20 batches in 5 s, no epoch finished yet: ETA from the batch rate (validation unknown)
    ({"epoch": 1, "phase": "training", "batch": 10, "batches": 20, "epoch_started_at": 100, "updated_at": 105},
     4, 106, 2.0, None, 3.5 * 20 / 2.0),
    # finished epochs took 12 and 14 s: 2.5 epochs left at 13 s
    ({"epoch": 2, "phase": "training", "batch": 10, "batches": 20, "epoch_started_at": 100, "updated_at": 110,
      "epoch_times": [12, 14]}, 4, 111, 1.0, 13.0, 2.5 * 13.0),
    # validating epoch 4 of 4: nothing left but this epoch's validation
    ({"epoch": 4, "phase": "validating", "epoch_times": [10, 10, 10]}, 4, 0, None, 10.0, 0.0),
    # only the last five epochs count
    ({"epoch": 7, "phase": "epoch_end", "epoch_times": [100, 1, 1, 1, 1, 1]}, 8, 0, None, 1.0, 1.0),
    ({"phase": "setup"}, 4, 0, None, None, None),
])
def test_training_rate(progress, epochs, now, bps, epoch_s, eta):
    r = training_rate(from_json(Progress, progress), epochs, now)
    assert (r.batches_per_s, r.epoch_s, r.eta_s) == (bps, epoch_s, pytest.approx(eta) if eta is not None else None)


def test_status_and_history_show_speed_eta_and_goodput():
    from supervisor.control.cli import render_history, render_status

    g = goodput(job("running"), [att(1, 0, 10, 100, "killed", after=2, reached=2),
                                 att(2, 105, 120, None, None, before=2)], now=220)
    row = {"name": "j", "state": "running", "gpus": "0,1", "pid": 42, "epoch": 3, "epochs": 4, "epochs_done": 2, "batch": 1,
           "batches": 2, "restarts": 1, "last_cause": "killed", "uptime_s": 115, "batches_per_s": 2.5,
           "eta_s": 75, "goodput": g.summary()}
    header, line = render_status([row], 0).splitlines()
    assert header.split() == ["NAME", "STATE", "GPUS", "PID", "EPOCH", "PROGRESS", "SPEED", "ETA", "RESTARTS", "LAST",
                              "CAUSE", "UPTIME", "DOWN", "GOODPUT"]
    assert line.split()[:3] == ["j", "running", "0,1"]
    assert "[#####" in line and " 62%" in line and "2.50 it/s" in line and "1m15s" in line
    assert "1 (killed)" in line and "0m20s" in line and "86%" in line  # down 20 s, training 190 of 220 s
    assert "2.5 s/it" in render_status([dict(row, batches_per_s=0.4)], 0)  # slow jobs: seconds per batch

    attempts = [dict(number=1, started_at=0, ended_at=100, pid=7, signal=9, exit_code=None, cause="killed",
                     epochs_before=0, epochs_after=2, detail="SIGKILL", training_s=90, down_after_s=20,
                     epochs_redone=0)]
    text = render_history({"job": row | {"state_reason": "r"}, "attempts": attempts, "events": [],
                           "goodput": g.to_dict()})
    assert text.splitlines()[1] == ("goodput: wall 3m40s = training 3m10s (86%) + startup 0m10s + down 0m20s + "
                                    "paused 0m00s; epochs redone 0 (batches 0); restarts 1 (killed)")
    assert "1m30s" in text.splitlines()[4] and "0m20s" in text.splitlines()[4]
