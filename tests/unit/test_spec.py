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


# -- issue 10: inputs that took the daemon down --------------------------------------------
def alias_bomb(levels: int = 6, width: int = 10) -> str:
    """The 422-byte file of the issue: ``levels`` levels of ``width`` aliases under train.classes."""
    lines = ["name: bomb", "train:", "  model: yolov8n.yaml", "  data: d.yaml", "  epochs: 1",
             "  classes:", "    - &a0 [0]"]
    for i in range(1, levels + 1):
        lines.append(f"    - &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_quickly_with_its_line():
    import time

    text = alias_bomb()
    assert len(text) < 600
    began = time.monotonic()
    with pytest.raises(SpecError) as err:
        parse_spec_text(text, "bomb.yaml")
    assert time.monotonic() - began < 2.0
    assert "YAML aliases" in err.value.problems[0] and err.value.problems[0].startswith("line ")


def test_a_recursive_alias_is_refused():
    with pytest.raises(SpecError, match="refused"):
        parse_spec_text("name: a\ntrain: &t {model: m, data: d, epochs: 1, classes: *t}\n")


def test_deep_nesting_is_refused():
    deep = "name: a\ntrain: {model: m, data: d, epochs: 1, classes: " + "[" * 40 + "]" * 40 + "}\n"
    with pytest.raises(SpecError, match="nested deeper than"):
        parse_spec_text(deep)
    deeper = "name: a\ntrain: {model: m, data: d, epochs: 1, classes: " + "[" * 5000 + "]" * 5000 + "}\n"
    with pytest.raises(SpecError, match="nested"):
        parse_spec_text(deeper)


def test_a_few_aliases_are_still_fine():
    spec = parse_spec_text("name: a\ntrain: {model: m, data: d, epochs: 1, classes: &c [0, 1]}\n"
                           "health: {stop_grace: 5}\n")
    assert spec.train["classes"] == [0, 1]


@pytest.mark.parametrize("device", [[], ",", [[]], " , ", [0, []], [[0]]])
def test_an_empty_device_set_is_refused_at_submit(device):
    # It used to normalise to "" and pass, then fail every later parse of the stored spec.
    assert any(p.startswith("train:") and "device" in p for p in problems(with_(train={**GOOD["train"],
                                                                                        "device": device})))


@pytest.mark.parametrize("device", [0, [0, 1], "0, 1", "cpu", "mps", [0, "1"]])
def test_a_stored_device_parses_again_to_itself(device):
    from supervisor.jobs.spec import spec_to_yaml

    spec = parse_spec(with_(train={**GOOD["train"], "device": device}))
    assert parse_spec_text(spec_to_yaml(spec)) == spec


@pytest.mark.parametrize("field, value", [("stall_timeout", ".nan"), ("stall_timeout", ".inf"),
                                          ("stop_grace", ".inf"), ("stop_grace", ".nan"),
                                          ("first_batch_timeout", ".inf")])
def test_nan_and_infinity_are_refused(field, value):
    with pytest.raises(SpecError) as err:
        parse_spec_text(f"name: a\ntrain: {{model: m, data: d, epochs: 1}}\nhealth: {{{field}: {value}}}\n")
    assert any(p.startswith(f"health.{field}") for p in err.value.problems), err.value.problems


def test_gpus_asks_for_any_n_free_gpus_and_names_no_device():
    s = parse_spec(with_(gpus=2, priority=5))
    assert (s.gpus, s.gpu_count, s.gpu_indices, s.device, s.priority) == (2, 2, [], "", 5)
    assert "device" not in s.train, "the daemon picks the set at the first launch"
    assert parse_spec(with_(train={**GOOD["train"], "device": "0,1"})).gpu_count == 2
    assert parse_spec(GOOD).gpu_count == 0


def test_gpus_and_a_device_together_are_refused():
    found = problems(with_(gpus=2, train={**GOOD["train"], "device": "0,1"}))
    assert any(p.startswith("train:") and "not both" in p for p in found), found
    assert any(p.startswith("gpus:") for p in problems(with_(gpus=0)))


def test_device_minus_one_is_refused_for_gpus_n():
    found = problems(with_(train={**GOOD["train"], "device": -1}))
    assert any("gpus: N" in p for p in found), found


def test_on_gpu_failure_and_its_wait():
    s = parse_spec(GOOD)
    assert (s.on_gpu_failure, s.gpu_failure_wait_s) == ("wait", 600.0)
    s = parse_spec(with_(on_gpu_failure="move", gpu_failure_wait="90s"))
    assert (s.on_gpu_failure, s.gpu_failure_wait_s) == ("move", 90.0)
    assert any(p.startswith("on_gpu_failure:") for p in problems(with_(on_gpu_failure="reboot")))
    assert any(p.startswith("gpu_failure_wait:") for p in problems(with_(gpu_failure_wait="soon")))
