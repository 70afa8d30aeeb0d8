"""The daemon <-> child contract: one definition, and the daemon reads the child's files as untrusted."""

import dataclasses

import pytest

from supervisor.child.train import Reporter
from supervisor.contract import ExitRecord, Plan, Progress, from_json, to_json
from supervisor.observe.rate import training_rate
from supervisor.probes.progress import stall_verdict
from supervisor.process.classify import classify


def test_ill_typed_values_from_the_child_fall_back_to_defaults_and_nothing_raises():
    """The job's user writes progress.json: a string for a number, a list for a path, NaN, must not
    break the stall rule, status or the run directory for that job."""
    hostile = {"first_batch_at": "soon", "max_gap_s": "abc", "updated_at": float("nan"), "epoch": "3",
               "batch": True, "save_dir": ["/etc"], "notes": "not a list", "epoch_times": {"x": 1},
               "unknown_key": 1, "phase": "training"}
    p = from_json(Progress, hostile)
    assert (p.first_batch_at, p.max_gap_s, p.updated_at, p.epoch, p.batch, p.save_dir, p.notes, p.epoch_times) == \
        (None, 0.0, None, None, None, None, [], [])
    assert p.phase == "training"
    assert stall_verdict(p, now=1000.0, started_at=0.0, stall_timeout_cfg="auto", floor=60.0,
                         first_batch_timeout=600.0).stalled
    assert training_rate(p, 10, 1000.0).eta_s is None
    assert from_json(Progress, ["not", "an", "object"]) is None


def test_an_exit_record_with_a_string_exit_code_is_not_believed():
    record = from_json(ExitRecord, {"exit_code": "0", "exception": 7})
    assert record.exit_code is None and record.exception is None
    assert classify(None, None, record, "", True, False).cause.value == "killed"  # not "completed"


def test_a_plan_missing_a_required_field_is_not_a_plan():
    good = to_json(Plan(job="j", attempt=1, epochs=3, train={"model": "m"}))
    assert from_json(Plan, good) == Plan(job="j", attempt=1, epochs=3, train={"model": "m"})
    assert from_json(Plan, {k: v for k, v in good.items() if k != "attempt"}) is None


def test_the_child_writes_exactly_the_contracts_fields(tmp_path):
    plan = Plan(job="j", attempt=2, epochs=3, train={}, progress_file=str(tmp_path / "p.json"),
                exit_record=str(tmp_path / "e.json"))
    rep = Reporter(plan)
    rep.beat(force=True, phase="training", epoch=1, batch=3, batches=10)
    assert set(rep.state) == {f.name for f in dataclasses.fields(Progress)}
    with pytest.raises(ValueError, match="not fields of the progress contract"):
        rep.beat(epoch=1, batchez=4)  # a typo is an error in the child, not a silent new key
    rep.exit_record(75, preempted="mid-epoch save")
    import json

    written = json.loads((tmp_path / "e.json").read_text())
    assert set(written) == {f.name for f in dataclasses.fields(ExitRecord)}
    assert from_json(ExitRecord, written).preempted == "mid-epoch save"
    with pytest.raises(TypeError):
        rep.exit_record(1, excepton="typo")


def test_a_boolean_is_not_a_number_of_seconds_but_an_integer_is():
    assert from_json(Progress, {"max_gap_s": True}).max_gap_s == 0.0
    assert from_json(Progress, {"max_gap_s": 3}).max_gap_s == 3
