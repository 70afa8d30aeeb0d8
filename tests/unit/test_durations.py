"""Durations in job files (``checkpoint_every``, ``gpu_failure_wait``): supervisor/jobs/spec.py ``parse_duration``."""

from __future__ import annotations

import pytest

from supervisor.jobs.spec import parse_duration


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90.0), ("10m", 600.0), ("1h", 3600.0), ("1.5h", 5400.0), ("0.5s", 0.5), (" 2 m ", 120.0),
    ("45", 45.0), ("10M", 600.0), (30, 30.0), (2.5, 2.5), ("off", 0.0), ("OFF", 0.0), (" off ", 0.0),
    ("0", 0.0), ("0s", 0.0), (0, 0.0),
])
def test_a_duration_in_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10 minutes", "m", "1d", "-5s", "1e3s", "", "s10", "10ms"])
def test_not_a_duration(bad):
    with pytest.raises(ValueError, match="is not a duration: use 10m, 90s, 1h, a number of seconds, or off"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [True, False])
def test_a_yes_or_no_is_not_a_duration(bad):  # YAML's off/no would otherwise pass as 0
    with pytest.raises(ValueError, match="^must be a duration such as 10m, 90s, 1h, a number of seconds, or off$"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [None, [1]])
def test_not_a_duration_of_another_type(bad):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [-1, float("inf"), float("nan"), -0.5])
def test_a_number_must_be_finite_and_not_negative(bad):
    with pytest.raises(ValueError, match="a duration must be a finite number of seconds >= 0"):
        parse_duration(bad)
