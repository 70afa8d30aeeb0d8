"""The recovery benchmark's bookkeeping (scripts/bench_recovery.py), on synthetic instrument records:
positions instead of times, landings and INVALID rows, batches trained twice, images never trained."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_recovery as br  # noqa: E402
from _bench_common import Marker, MarkerReader, read_markers  # noqa: E402


def b(pid: int, at: float, epoch: int, i: int, nb: int, files: list[str] | None) -> Marker:
    return Marker("b", pid, at, epoch, (str(i), str(nb), ",".join(files) if files else "?"))


def test_point_index_is_a_position_not_a_time():
    assert br.Point(2, 0.70).index(210) == 146  # after batch 147 of 210
    assert br.Point(3, 0.50).index(8) == 3
    assert br.Point(1, 0.0).index(8) == 0 and br.Point(1, 1.0).index(8) == 7


def test_plan_is_seeded_and_in_increasing_epochs():
    a, c = br.Plan.draw(7, 12), br.Plan.draw(7, 12)
    assert a == c
    assert [p.epoch for p in a.kills] == sorted({p.epoch for p in a.kills}) and len(a.kills) == 3
    assert all(2 <= p.epoch <= 12 for p in (*a.kills, a.term, a.stop))
    assert [str(p) for p in a.long] == ["SIGKILL at 70% of epoch 2", "SIGTERM at 50% of epoch 3"]


def test_scenario_families():
    assert br.expand_scenarios("long_epoch") == ["long_baseline", "long_kill_term"]
    assert br.expand_scenarios("baseline,long_epoch,baseline") == ["baseline", "long_baseline", "long_kill_term"]
    assert br.expand_scenarios("all") == list(br.SCENARIOS)
    with pytest.raises(SystemExit):
        br.expand_scenarios("nope")


def test_marker_reader_reads_only_whole_new_lines(tmp_path):
    path = tmp_path / "m.txt"
    reader = MarkerReader(path)
    assert reader.read() == []
    path.write_text("start 1 1.0 \nb 1 2.0 1 0 8 a,b\nb 1 3.0 1 1 8 c")
    got = reader.read()
    assert [m.kind for m in got] == ["start", "b"] and got[1].files == ["a", "b"] and got[1].batches == 8
    with open(path, "a") as f:
        f.write(",d\n")
    got = reader.read()
    assert got[-1].files == ["c", "d"] and got[-1].index == 1
    assert [m.rest for m in got] == [m.rest for m in read_markers(path)]


def test_a_kill_and_a_mid_epoch_resume_are_counted_by_batch_and_image():
    nb, images = 4, {f"{k:02d}" for k in range(8)}
    order = [["00", "01"], ["02", "03"], ["04", "05"], ["06", "07"]]
    ms = [Marker("epoch", 1, 0.0, 1)] + [b(1, 1 + i, 1, i, nb, order[i]) for i in range(nb)]
    ms += [Marker("epoch", 1, 10.0, 2)] + [b(1, 11 + i, 2, i, nb, order[i]) for i in range(3)]  # killed after 3
    # A resume that re-does batch 2 (the last save was after batch 2) and trains the rest.
    ms += [Marker("start", 2, 20.0, None), Marker("epoch", 2, 21.0, 2)]
    ms += [b(2, 22 + k, 2, i, nb, order[i]) for k, i in enumerate((2, 3))]
    landing = br.Landing("SIGKILL at 70% of epoch 2", True, 1, 13.5, 2, 2, nb)
    acc = br.batch_accounting(ms, [landing], images)
    assert acc["batches_twice_by_epoch"] == {2: 1} and acc["batches_twice_total"] == 1
    [row] = acc["per_interruption"]
    assert row == {"interruption": "SIGKILL at 70% of epoch 2", "epoch": 2, "at_batch": 2, "batches": 4,
                   "batches_twice": 1, "positions_twice": 1, "images_twice": 2, "images_never": 0}
    assert acc["epoch_train_s"] == [4.0]  # epoch 1 in process 1; epoch 2 is whole in no process
    # An exact resume (after the batch the kill followed): nothing twice, nothing skipped.
    exact = ms[:-2] + [b(2, 22, 2, 3, nb, order[3])]
    [row] = br.batch_accounting(exact, [landing], images)["per_interruption"]
    assert row["batches_twice"] == 0 and row["images_never"] == 0 and row["images_twice"] == 0
    # A resume that skips batches: their images are never trained in that epoch.
    missing = ms[:6] + [b(1, 11, 2, 0, nb, order[0])] + [b(2, 22, 2, 3, nb, order[3])]
    [row] = br.batch_accounting(missing, [landing], images)["per_interruption"]
    assert row["images_never"] == 4  # batches 1 and 2 of epoch 2 (0-based), 2 images each


class _Sys:
    class s:  # noqa: N801 - stands in for Settings
        batches_per_epoch = 8


def test_a_row_is_invalid_when_a_planned_interruption_did_not_land():
    runner = br.Runner.__new__(br.Runner)
    runner.landings = [br.Landing("SIGKILL at 50% of epoch 3", True, 1, 1.0, 3, 3, 8),
                       br.Landing("SIGKILL at 40% of epoch 6", False, why="not reached: the run was over before it")]
    assert runner.validity(completed=True) == "SIGKILL at 40% of epoch 6: not reached: the run was over before it"
    # The system stopped training for good before it: its failure is the result.
    assert runner.validity(completed=False) is None
    runner.landings[1] = br.Landing("SIGKILL at 40% of epoch 6", False, 2, why="missed: first seen at batch 8/8")
    assert "missed" in runner.validity(completed=False)


def test_invalid_rows_are_not_results_in_the_report():
    out = br.Outcome(system="loop", scenario="kill3", completed=True, capped=False, status="the loop ended (exit 0)",
                     wall_s=50.0, elapsed_s=50.0, epochs_once=True, epochs_seen=list(range(1, 13)), restarts=2,
                     epochs_twice=2, invalid="SIGKILL at 40% of epoch 11: not reached: the run was over before it")
    table = br.scenario_table([out], 40.0)
    assert "**INVALID**" in table and "1.25" not in table
    assert "not counted, INVALID" in br.summary([out]) and "after 0 of 0 interruptions" in br.summary([out])


def test_checkpoint_every_is_a_tenth_of_the_epoch_where_the_spec_has_it():
    from supervisor.jobs.spec import JobSpec

    value, note = br.checkpoint_every_for(26.0)
    if "checkpoint_every" in JobSpec.model_fields:
        assert value == 2.6 and "0.10 of the baseline" in note
    else:
        assert value is None and "no `checkpoint_every` key" in note
