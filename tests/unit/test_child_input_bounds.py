"""Nothing a child writes can raise in the daemon, and what the daemon keeps of it stays in range
(issue 20, item 3): progress.json, exit.json and the mid-epoch record are the job user's files."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Optional

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.contract import MAX_FLOAT, MAX_INT, MAX_ITEMS, MAX_TEXT, ExitRecord, Progress, from_json
from supervisor.daemon.config import DaemonConfig
from supervisor.daemon.attempts import NOTES_PER_ATTEMPT
from supervisor.daemon.core import Daemon
from supervisor.observe.goodput import batches_trained, epochs_trained
from supervisor.observe.rate import training_rate
from supervisor.paths import Home
from supervisor.probes.checkpoint import MAX_COUNT, _midepoch_record
from supervisor.probes.progress import ProgressFiles, stall_verdict
from supervisor.process.classify import classify
from tests.conftest import FAKE_DATA

INT64 = 2**63 - 1
HUGE_INT = 10**400  # json.loads reads it; math.isfinite(int) overflows on it

# -- hostile JSON -----------------------------------------------------------------------------
hostile_numbers = st.one_of(
    st.integers(), st.sampled_from([HUGE_INT, -HUGE_INT, 2**63, 2**31, MAX_INT + 1, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, MAX_FLOAT * 2]),
)
scalars = st.one_of(st.none(), st.booleans(), hostile_numbers, st.text(max_size=50),
                    st.sampled_from(["x" * (MAX_TEXT + 10)]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=6)),
                           max_leaves=30)


def objects_for(cls) -> st.SearchStrategy[dict]:
    """JSON objects using the contract's own field names (plus strangers) with any value."""
    names = [f.name for f in dataclasses.fields(cls)] + ["unknown"]
    return st.dictionaries(st.sampled_from(names), json_values, max_size=len(names))


def _written(tmp_path, data: dict) -> str:
    path = tmp_path / "progress.json"
    path.write_text(json.dumps(data))  # NaN and Infinity as Python writes them; json.loads reads them back
    return str(path)


# -- what "in range" means ---------------------------------------------------------------------
def assert_in_range(value, where: str) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):  # a whole number where a float belongs: in the float range
        assert -MAX_FLOAT <= value <= MAX_FLOAT, where
    elif isinstance(value, float):
        assert math.isfinite(value) and abs(value) <= MAX_FLOAT, where
    elif isinstance(value, str):
        assert len(value) <= MAX_TEXT, where
    elif isinstance(value, list):
        assert len(value) <= MAX_ITEMS, where
        for item in value:
            assert_in_range(item, where)
    elif isinstance(value, dict):
        assert len(value) <= MAX_ITEMS, where
        for key, item in value.items():
            assert isinstance(key, str) and len(key) <= MAX_TEXT, where
            assert_in_range(item, f"{where}.{key}")
    else:
        raise AssertionError(f"{where}: {type(value).__name__} is not a JSON value")


def assert_record_in_range(record) -> None:
    hints = typing.get_type_hints(type(record))
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        assert_in_range(value, f.name)
        if hints[f.name] in (int, Optional[int]) and value is not None:  # counts, epochs, pids
            assert isinstance(value, int) and -MAX_INT <= value <= MAX_INT, f.name


# -- the property tests ------------------------------------------------------------------------
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=objects_for(Progress))
def test_any_progress_file_reads_without_raising_and_stays_in_range(tmp_path, data):
    progress, _key = ProgressFiles().read(_written(tmp_path, data))
    assert progress is not None
    assert_record_in_range(progress)
    # every reader of the parsed file downstream: the stall rule, the rate, goodput's counts
    stall_verdict(progress, now=2e9, started_at=1e9, stall_timeout_cfg="auto", floor=60.0, first_batch_timeout=600.0)
    stall_verdict(progress, now=2e9, started_at=1e9, stall_timeout_cfg=30, floor=60.0, first_batch_timeout=600.0)
    rate = training_rate(progress, 100, 2e9)
    for value in (rate.batches_per_s, rate.epoch_s, rate.eta_s, rate.epochs_done):
        assert value is None or math.isfinite(value)
    assert 0 <= epochs_trained(progress) <= INT64
    counted = batches_trained(progress)
    assert counted is None or all(0 <= n <= INT64 for n in counted)  # what SQLite is given


@settings(max_examples=300, deadline=None)
@given(data=objects_for(ExitRecord))
def test_any_exit_record_reads_without_raising_and_stays_in_range(data):
    record = from_json(ExitRecord, json.loads(json.dumps(data)))
    assert record is not None
    assert_record_in_range(record)
    for exit_code, sig in ((None, None), (1, None), (None, 9), (0, None)):
        classify(exit_code, sig, record, "log tail", True, False)


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(json_values, objects_for_midepoch := st.fixed_dictionaries(
    {k: hostile_numbers for k in ("epoch", "next_batch", "batches", "pass_key", "batch_size")})),
    epoch=st.integers(min_value=-1, max_value=1000))
def test_any_midepoch_record_is_a_record_in_range_or_a_reason(raw, epoch):
    result = _midepoch_record(raw, epoch)
    assert result is None or isinstance(result, (str, dict))
    if isinstance(result, dict):
        for key in ("epoch", "next_batch", "batches", "pass_key", "batch_size"):
            assert 0 <= result[key] <= MAX_COUNT


# -- the findings, one by one ------------------------------------------------------------------
def test_a_400_digit_integer_in_progress_json_is_dropped_not_raised(tmp_path):
    """``math.isfinite`` on it raised OverflowError: every tick, for the stall rule, status and the
    attempt's end (the job stayed ``ending`` with its GPUs held)."""
    path = tmp_path / "progress.json"
    path.write_text('{"updated_at": %s, "max_gap_s": %s, "epoch": 3}' % ("9" * 400, "9" * 400))
    progress, _ = ProgressFiles().read(str(path))
    assert progress.updated_at is None and progress.max_gap_s == 0.0 and progress.epoch == 3


def test_an_epoch_times_list_with_a_string_inside_is_not_kept():
    """Lists were checked only by container type: the elements reached the rate computation."""
    assert from_json(Progress, {"epoch_times": [1.5, "x"]}).epoch_times == []
    assert from_json(Progress, {"notes": ["ok", 7]}).notes == []
    assert from_json(Progress, {"losses": {"box": "nan?"}}).losses is None


def test_counts_whose_product_overflows_sqlite_are_dropped():
    p = from_json(Progress, {"epoch": 2**40, "batches": 2**40, "batch": 5, "phase": "training"})
    assert p.epoch is None and p.batches is None
    assert batches_trained(p) is None


def test_long_strings_and_lists_are_dropped():
    p = from_json(Progress, {"phase": "p" * 100_000, "notes": ["n"] * (MAX_ITEMS + 1), "save_dir": "/r/" + "d" * 9000})
    assert p.phase == "setup" and p.notes == [] and p.save_dir is None  # a path cut short could name another folder


# -- notes: a few per attempt, the rest counted in one event ------------------------------------
@pytest.fixture
def daemon(tmp_path):
    d = Daemon(Home(tmp_path / "home"), DaemonConfig())
    spec = yaml.safe_dump({"name": "j", "train": {"model": "yolov8n.yaml", "data": str(FAKE_DATA),
                                                  "epochs": 2, "device": "cpu"}})
    d.store.add_job("j", spec, "running", source="test")
    yield d
    d.store.close()


def test_a_notes_flood_becomes_a_few_events_and_one_count(daemon):
    """200,000 notes became 200,000 events (status took 10 s, state.db grew 4x)."""
    run = types.SimpleNamespace(attempt_no=1, extra={})  # the two fields the notes step reads
    for version in range(1, 6):  # the child rewrites its file with more notes each time
        daemon.attempts.note_child_lines("j", run, Progress(notes=[f"note {i}" for i in range(version * 400)]))
    daemon.ending["j"] = run  # the attempt ended: its last look at the file
    daemon.attempts.note_child_lines("j", run, Progress(notes=[f"note {i}" for i in range(2000)]))
    daemon.attempts.note_child_lines("j", run, Progress(notes=[f"note {i}" for i in range(2000)]))  # a retried end
    events = [e.reason for e in daemon.store.events("j") if e.kind == "checkpoint"]
    assert events[:NOTES_PER_ATTEMPT] == [f"attempt 1: note {i}" for i in range(NOTES_PER_ATTEMPT)]
    assert len(events) == NOTES_PER_ATTEMPT + 1
    assert events[-1] == (f"attempt 1: {2000 - NOTES_PER_ATTEMPT} more note(s) from the child not recorded "
                          f"(at most {NOTES_PER_ATTEMPT} an attempt)")


def test_a_few_notes_are_all_recorded_and_no_count_event(daemon):
    run = types.SimpleNamespace(attempt_no=2, extra={})
    daemon.attempts.note_child_lines("j", run, Progress(notes=["resumed at epoch 3 (inexact)"]))
    daemon.ending["j"] = run
    daemon.attempts.note_child_lines("j", run, Progress(notes=["resumed at epoch 3 (inexact)"]))
    assert [e.reason for e in daemon.store.events("j") if e.kind == "checkpoint"] == \
        ["attempt 2: resumed at epoch 3 (inexact)"]
