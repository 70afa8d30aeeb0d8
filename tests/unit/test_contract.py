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


# -------------------------------------------------------------------- ranges and sizes, at their edges (issue 25)
# Written for the contract group's mutants (scripts/mutation.sh contract): each bound is checked on
# both sides, through from_json, the way the daemon reads a child's files.
from supervisor.contract import MAX_ANY_NODES, MAX_FLOAT, MAX_INT, MAX_ITEMS, MAX_TEXT  # noqa: E402


@pytest.mark.parametrize("value, kept", [
    (MAX_INT, True), (-MAX_INT, True), (0, True), (MAX_INT + 1, False), (-MAX_INT - 1, False),
    (True, False), (3.0, False), ("3", False),
])
def test_an_int_field_keeps_an_int_within_max_int(value, kept):
    assert from_json(Progress, {"epoch": value}).epoch == (value if kept else None)


@pytest.mark.parametrize("value, kept", [
    (MAX_FLOAT, True), (-MAX_FLOAT, True), (1.5, True), (0.0, True), (int(MAX_FLOAT), True), (-int(MAX_FLOAT), True),
    (MAX_FLOAT * 1.0001, False), (-MAX_FLOAT * 1.0001, False), (int(MAX_FLOAT) + 1, False),
    (-int(MAX_FLOAT) - 1, False), (10**400, False), (float("inf"), False), (float("nan"), False), (False, False),
])
def test_a_float_field_keeps_a_finite_number_within_max_float(value, kept):
    got = from_json(Progress, {"updated_at": value}).updated_at
    assert got == (value if kept else None)


def test_a_string_field_keeps_at_most_max_text_characters():
    assert from_json(Progress, {"save_dir": "d" * MAX_TEXT}).save_dir == "d" * MAX_TEXT
    assert from_json(Progress, {"save_dir": "d" * (MAX_TEXT + 1)}).save_dir is None
    assert from_json(Progress, {"phase": 7}).phase == "setup"


def test_a_list_field_keeps_at_most_max_items_each_of_its_type():
    assert from_json(Progress, {"epoch_times": [1.0] * MAX_ITEMS}).epoch_times == [1.0] * MAX_ITEMS
    assert from_json(Progress, {"epoch_times": [1.0] * (MAX_ITEMS + 1)}).epoch_times == []
    assert from_json(Progress, {"epoch_times": [1.0, "2"]}).epoch_times == []
    assert from_json(Progress, {"notes": ["a", "b"]}).notes == ["a", "b"]
    assert from_json(Progress, {"notes": ["a", 2]}).notes == []


def test_a_dict_field_checks_its_size_keys_and_values():
    many = {str(i): 1.0 for i in range(MAX_ITEMS)}
    assert from_json(Progress, {"losses": many}).losses == many
    assert from_json(Progress, {"losses": {**many, "x": 1.0}}).losses is None
    assert from_json(Progress, {"losses": {"box": "1"}}).losses is None
    assert from_json(Progress, {"losses": {"box": float("inf")}}).losses is None
    assert from_json(Progress, {"startup": {"import": 1.5}}).startup == {"import": 1.5}
    assert from_json(Progress, {"startup": {"import": None}}).startup == {}


def test_a_free_form_field_is_bounded_in_values_and_ranges():
    nested = {"epoch": 3, "next_batch": 5, "tloss": [1.5, None, True, "x" * MAX_TEXT], "inner": {"a": {"b": 1}}}
    assert from_json(Progress, {"last_midepoch": nested}).last_midepoch == nested
    for bad in ({"x": 10**400}, {"x": float("nan")}, {"x": "s" * (MAX_TEXT + 1)}, {"x": [object()]},
                {"x": list(range(MAX_ITEMS + 1))}, {"x": {str(i): 0 for i in range(MAX_ITEMS + 1)}},
                {"x": {"y": float("nan")}}, {"x": {"y": {"z": "s" * (MAX_TEXT + 1)}}}):
        assert from_json(Progress, {"last_midepoch": bad}).last_midepoch is None, bad
    at_most = {"x": list(range(MAX_ITEMS)), "y": {str(i): 0 for i in range(MAX_ITEMS)}}
    assert from_json(Progress, {"last_midepoch": at_most}).last_midepoch == at_most
    # the value budget is shared down the tree: MAX_ANY_NODES values in one free-form value, lists counted
    value = [[0] * (MAX_ITEMS - 1) for _ in range(9)] + [[0] * (MAX_ANY_NODES - 1 - 9 * MAX_ITEMS - 1)]
    assert from_json(Progress, {"ddp": {"v": value}}).ddp == {"v": value}
    value[-1].append(0)
    assert from_json(Progress, {"ddp": {"v": value}}).ddp is None
