"""Which train arguments an edit may change under a resume: a plain table over plan_edit."""

import pytest

from supervisor.jobs.edit import EditRefused, parse_assignments, plan_edit
from supervisor.jobs.spec import parse_spec

SPEC = parse_spec({"name": "j", "train": {"model": "yolov8n.yaml", "data": "/d/old.yaml", "epochs": 10,
                                          "batch": 16, "device": "0,1"}})


def test_safe_keys_apply_and_record_old_and_new():
    e = plan_edit(SPEC, parse_assignments(["data=/d/new.yaml", "workers=4", "val=false"]), force=False)
    assert e.spec.train["data"] == "/d/new.yaml" and e.spec.train["workers"] == 4 and e.spec.train["val"] is False
    assert e.changes["data"] == ("/d/old.yaml", "/d/new.yaml") and not e.warnings


@pytest.mark.parametrize("assignment, why", [
    ("batch=32", "effective learning rate"),
    ("imgsz=320", "imgsz changes"),
    ("device=0", "number of GPUs"),
])
def test_schedule_changes_need_force_and_say_why(assignment, why):
    with pytest.raises(EditRefused, match="--force"):
        plan_edit(SPEC, parse_assignments([assignment]), force=False)
    e = plan_edit(SPEC, parse_assignments([assignment]), force=True)
    assert any(why in w for w in e.warnings)


def test_the_same_gpu_count_on_other_gpus_is_safe():
    e = plan_edit(SPEC, parse_assignments(["device=2,3"]), force=False)
    assert e.spec.device == "2,3" and not e.warnings


@pytest.mark.parametrize("assignment, why", [
    ("lr0=0.1", "cannot change under a resume"),
    ("optimizer=SGD", "cannot change under a resume"),
    ("model=yolov8s.yaml", "cannot change under a resume"),
    ("epochs=20", "extend"),
])
def test_what_a_resume_ignores_is_refused_with_the_reason(assignment, why):
    with pytest.raises(EditRefused, match=why):
        plan_edit(SPEC, parse_assignments([assignment]), force=True)


def test_a_malformed_assignment_is_refused():
    with pytest.raises(EditRefused, match="KEY=VALUE"):
        parse_assignments(["data"])


def test_assignments_split_at_the_first_equals_sign_and_keep_what_yaml_cannot_read():
    got = parse_assignments(["data=/d/a=b.yaml", "cache=", "time=[unclosed", "workers = 4"])
    assert got == {"data": "/d/a=b.yaml", "cache": "", "time": "[unclosed", "workers": 4}


def test_every_refusal_is_named_and_joined_word_for_word():
    from supervisor.jobs.edit import SCHEDULE

    with pytest.raises(EditRefused) as refused:
        plan_edit(SPEC, {"epochs": 20, "batch": 32, "lr0": 0.1}, force=False)
    assert str(refused.value) == (
        "epochs: change it with `yolo-supervisorctl extend NAME --epochs N`; "
        f"batch: {SCHEDULE['batch']}; repeat with --force to change it anyway; "
        "lr0: cannot change under a resume (Ultralytics keeps the checkpoint's value); "
        "submit a new job for a new run")


def test_forced_schedule_changes_are_warnings_without_the_hint():
    from supervisor.jobs.edit import DEVICE_COUNT, SCHEDULE

    e = plan_edit(SPEC, {"batch": 32, "device": "0"}, force=True)
    assert e.warnings == [f"batch: {SCHEDULE['batch']}", f"device: {DEVICE_COUNT}"]
    with pytest.raises(EditRefused, match=r"^device: .*; repeat with --force to change it anyway$"):
        plan_edit(SPEC, {"device": "0,1,2"}, force=False)    # another count of GPUs


def test_an_edit_that_makes_the_job_invalid_says_it_was_the_edit():
    from supervisor.jobs.spec import SpecError

    with pytest.raises(SpecError, match="^edit of j: train: 'data' must be a non-empty string"):
        plan_edit(SPEC, {"data": 5}, force=False)
