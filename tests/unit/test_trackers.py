"""The tracker record, the settings check and the environment pins (no tracker library needed)."""

from __future__ import annotations

import json

import pytest

from supervisor.child.trackers import WANDB_FLUSH_ENV, WANDB_FLUSH_S, pin_environment
from supervisor.jobs.spec import SpecError, parse_spec_text as parse_spec
from supervisor.jobs.trackers import (TrackerRecord, attempt_cause, finalize_argv, parse_owner_settings,
                                      settings_problems)


def test_first_ids_are_chosen_once_and_survive_a_round_trip():
    rec = TrackerRecord()
    rec.choose_first_ids()
    wandb_id, comet_key = rec.ids["wandb"], rec.ids["comet"]
    assert len(wandb_id) == 8 and wandb_id.isalnum() and wandb_id == wandb_id.lower()
    assert len(comet_key) == 32 and comet_key.isalnum()  # Comet takes 32 to 50 alphanumerics
    again = TrackerRecord.load(rec.dump())
    again.choose_first_ids()
    assert again.ids == {"wandb": wandb_id, "comet": comet_key}


def test_a_reported_run_is_kept_and_never_replaced_by_a_later_report():
    rec = TrackerRecord()
    learned = rec.take_reported({"mlflow": {"id": "abc", "url": "http://mlflow:5000/#/experiments/1/runs/abc"},
                                 "tensorboard": {"id": "/runs/train", "url": None}})
    assert learned == ["mlflow", "tensorboard"]
    assert rec.take_reported({"mlflow": {"id": "other", "url": "http://elsewhere"}}) == []
    assert rec.runs() == {"mlflow": {"id": "abc", "url": "http://mlflow:5000/#/experiments/1/runs/abc"},
                          "tensorboard": {"id": "/runs/train", "url": None}}
    assert rec.describe("mlflow") == "mlflow: run abc http://mlflow:5000/#/experiments/1/runs/abc"


@pytest.mark.parametrize("reported", [None, [], "x", {"mlflow": "abc"}, {"mlflow": {"id": 5}},
                                      {"mlflow": {"id": "x" * 500}}, {"nope": {"id": "a"}}])
def test_what_a_child_reports_is_untrusted(reported):
    rec = TrackerRecord()
    rec.take_reported(reported)
    assert "mlflow" not in rec.ids and "nope" not in rec.runs()


@pytest.mark.parametrize("text", [None, "", "not json", "[1]", json.dumps({"ids": [1], "attempts": "x"})])
def test_a_damaged_record_loads_empty(text):
    rec = TrackerRecord.load(text)
    assert rec.ids == {} and rec.attempts == [] and rec.runs() == {}


def test_each_attempt_is_noted_once_with_its_cause():
    rec = TrackerRecord()
    rec.note_attempt(1, attempt_cause(1, None, None, None, None, None))
    rec.note_attempt(2, attempt_cause(2, "killed", "SIGKILL", None, "0", "0"))
    rec.note_attempt(2, "again")
    rec.note_attempt(3, attempt_cause(3, "preempted", None, 8, "1", "0"))
    assert rec.attempts == [
        {"attempt": 1, "cause": "first attempt"},
        {"attempt": 2, "cause": "after attempt 1: killed (SIGKILL)"},
        {"attempt": 3, "cause": "after attempt 2: preempted; extended to 8 epochs; moved to GPU 1"},
    ]


def test_only_an_mlflow_run_needs_closing():
    assert finalize_argv("/py", "KILLED", {"wandb": "abcd1234"}) is None
    assert finalize_argv("/py", "KILLED", {"mlflow": "r1"}) == [
        "/py", "-m", "supervisor.child.trackers", "finalize", "--status", "KILLED", "--mlflow", "r1"]


def test_settings_are_checked_against_ultralytics_keys_and_types():
    assert settings_problems({"wandb": True, "mlflow": False, "datasets_dir": "/data"}) == []
    problems = settings_problems({"wandbb": True, "mlflow": "yes", "sync": 1})
    assert len(problems) == 3
    assert "'wandbb' is not an Ultralytics setting" in problems[0]
    assert problems[1] == "mlflow: must be true or false, not 'yes'"


def test_a_job_with_a_wrong_setting_is_refused_naming_the_key():
    with pytest.raises(SpecError) as err:
        parse_spec("name: a\ntrain: {model: yolov8n.yaml, data: /d.yaml, epochs: 2}\nsettings: {wandb: maybe}\n",
                   "a.yaml")
    assert "wandb: must be true or false" in str(err.value)
    spec = parse_spec("name: a\ntrain: {model: yolov8n.yaml, data: /d.yaml, epochs: 2}\nsettings: {wandb: true}\n",
                      "a.yaml")
    assert spec.settings == {"wandb": True}


def test_an_owners_settings_file_keeps_only_known_well_typed_keys():
    data = json.dumps({"wandb": True, "mlflow": "no", "future_key": 1, "datasets_dir": "/d"}).encode()
    assert parse_owner_settings(data) == {"wandb": True, "datasets_dir": "/d"}
    assert parse_owner_settings(b"\xff not json") == {}
    assert parse_owner_settings(b"[]") == {}


def test_the_ids_are_pinned_and_a_jobs_own_value_wins():
    env = {"WANDB_RUN_ID": "mine"}
    pin_environment({"wandb": "abcd1234", "comet": "k" * 32, "mlflow": "r1"}, env)
    assert env == {"WANDB_RUN_ID": "mine", "WANDB_RESUME": "allow", "COMET_EXPERIMENT_KEY": "k" * 32,
                   "MLFLOW_RUN_ID": "r1", WANDB_FLUSH_ENV: WANDB_FLUSH_S}
    env = {}
    pin_environment({"wandb": "abcd1234"}, env)
    assert "MLFLOW_RUN_ID" not in env and env["WANDB_RUN_ID"] == "abcd1234"  # no MLflow id before it exists
