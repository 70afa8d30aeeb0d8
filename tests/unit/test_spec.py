"""The job spec validator: every error names the field and the problem."""

import pytest

from supervisor.jobs.spec import MAX_SPEC_BYTES, SpecError, load_spec, parse_spec, parse_spec_text

GOOD = {"name": "yolo.run-1_a", "train": {"model": "yolov8n.yaml", "data": "d.yaml", "epochs": 3}}


def with_(**kw):
    data = {**GOOD, "train": dict(GOOD["train"])}
    data.update(kw)
    return data


def problems(data):
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    return err.value.problems


def test_defaults():
    s = parse_spec(GOOD)
    assert s.restart.max_restarts == 5 and s.restart.max_no_progress == 2
    assert s.device == "cpu" and s.keep_checkpoints == 2 and s.on_oom == "retry"


@pytest.mark.parametrize("device, expected", [(0, "0"), ([0, 1], "0,1"), ("0, 1", "0,1"), ("cpu", "cpu")])
def test_device_set_is_normalised(device, expected):
    assert parse_spec(with_(train={**GOOD["train"], "device": device})).device == expected


@pytest.mark.parametrize("name", ["../etc", "a/b", "-x", "", "x" * 65, "a b"])
def test_bad_names_are_rejected(name):
    assert any(p.startswith("name:") for p in problems(with_(name=name)))


@pytest.mark.parametrize("data, field, words", [
    ({"train": GOOD["train"]}, "name", "Field required"),
    (with_(train={"model": "m", "data": "d"}), "train", "epochs"),
    (with_(train={**GOOD["train"], "epochs": 0}), "train", "positive integer"),
    (with_(train={**GOOD["train"], "epochs": "3"}), "train", "positive integer"),
    (with_(train={**GOOD["train"], "resume": True}), "train", "managed by the supervisor"),
    (with_(train={**GOOD["train"], "bogus_arg": 1}), "train", "bogus_arg"),
    (with_(surprise=1), "surprise", "unknown key"),
    (with_(restart={"max_restarts": -1}), "restart.max_restarts", "greater than or equal"),
    (with_(restart={"backoff": {"factor": 0.5}}), "restart.backoff.factor", "greater than or equal"),
    (with_(on_oom="explode"), "on_oom", "'retry' or 'reduce_batch'"),
    (with_(health={"stall_timeout": -5}), "health.stall_timeout", ""),
])
def test_errors_name_field_and_problem(data, field, words):
    found = problems(data)
    assert any(p.startswith(f"{field}:") and words in p for p in found), found


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(SpecError) as err:
        parse_spec_text("name: a\ntrain:\n  model: [x,\n", "job.yaml")
    assert "line" in err.value.problems[0] and "YAML syntax error" in err.value.problems[0]
    assert str(err.value).startswith("job.yaml:")


def test_top_level_must_be_a_mapping():
    with pytest.raises(SpecError, match="expected a mapping"):
        parse_spec_text("- a\n- b\n")


def test_oversized_file_is_refused(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text("name: a\n# " + "x" * MAX_SPEC_BYTES)
    with pytest.raises(SpecError, match="byte limit"):
        load_spec(f)
