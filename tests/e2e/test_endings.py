"""Every way a run ends gets its own answer (issue 22): failures before the first batch that a retry
can fix, preemptions that never let the job save, divergence, a drill that injects each fault.

The stand-in trainer (tests/e2e/endings_trainer.py) where the policy is the point (a stale NFS handle
during setup, exit 75 before training); real CPU training with `drill` where checkpoints matter.
"""

from pathlib import Path

import pytest

from tests.conftest import FAKE_DATA, cpu_job, ctl, wait_for, wait_socket

ENDINGS_TRAINER = Path(__file__).parent / "endings_trainer.py"


@pytest.fixture
def endings_daemon(daemon, monkeypatch):
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(ENDINGS_TRAINER))
    return daemon


def quick_job(name: str, **restart) -> dict:
    spec = cpu_job(name, FAKE_DATA, epochs=2)
    spec["restart"] = {"backoff": {"initial": 0.2, "max": 0.5, "factor": 2}, **restart}
    return spec


def test_a_stale_nfs_handle_before_the_first_batch_is_retried_and_the_job_completes(endings_daemon):
    endings_daemon.start()
    endings_daemon.drop(quick_job("estale"))
    job = endings_daemon.wait_state("estale", {"completed", "failed"}, timeout=120)
    attempts = endings_daemon.attempts("estale")
    assert job.state == "completed", job.state_reason
    assert [a.cause for a in attempts] == ["setup_failed", "setup_failed", "completed"]
    assert "Stale file handle" in attempts[0].detail
    assert job.crash_restarts == 0  # not charged to the crash budget


def test_setup_failures_past_max_setup_failures_fail_the_job_with_the_last_error(endings_daemon):
    endings_daemon.start()
    endings_daemon.drop(quick_job("estale-twice", max_setup_failures=1))
    job = endings_daemon.wait_state("estale-twice", {"completed", "failed"}, timeout=120)
    assert job.state == "failed"
    assert "setup failed 2 times in a row" in job.state_reason and "Stale file handle" in job.state_reason
    assert len(endings_daemon.attempts("estale-twice")) == 2


def test_a_job_preempted_forever_ends_held_and_start_gives_it_a_fresh_streak(endings_daemon):
    endings_daemon.start()
    wait_socket(endings_daemon)
    endings_daemon.drop(quick_job("preempted", max_preemptions_without_progress=3))
    job = endings_daemon.wait_state("preempted", {"held", "failed", "completed"}, timeout=120)
    assert job.state == "held", job.state_reason
    assert "preempted 3 times in a row without progress" in job.state_reason
    assert "SIGTERM soon after it starts" in job.state_reason
    assert [a.cause for a in endings_daemon.attempts("preempted")] == ["preempted"] * 3
    # Nothing but a person lifts it: the daemon's device-hold release runs every tick and leaves it.
    wait_for(lambda: _held_for(endings_daemon, "preempted", 3), 30, what="three seconds (ticks) held")
    assert endings_daemon.job("preempted").state == "held"
    assert ctl(endings_daemon.home, "start", "preempted").returncode == 0
    job = endings_daemon.wait_state("preempted", "held", timeout=120)
    assert len(endings_daemon.attempts("preempted")) == 6  # a fresh streak of three


def _held_for(daemon, name, seconds):
    import time

    job = daemon.job(name)
    return job.state == "held" and time.time() - job.updated_at >= seconds
