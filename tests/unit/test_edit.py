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
