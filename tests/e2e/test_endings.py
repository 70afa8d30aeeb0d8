"""Every way a run ends gets its own answer (issue 22): failures before the first batch that a retry
can fix, preemptions that never let the job save, divergence, a drill that injects each fault.

The stand-in trainer (tests/e2e/endings_trainer.py) where the policy is the point (a stale NFS handle
during setup, exit 75 before training); real CPU training with `drill` where checkpoints matter.
"""

import os
import signal
from pathlib import Path

import pytest

from supervisor import results_csv

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


# -- drill: one real fault in the real running training --------------------------------------
def progress(daemon, name) -> dict:
    from supervisor.contract import read_json

    return read_json(daemon.home / "jobs" / name / "progress.json") or {}


def wait_training(daemon, name, epoch=1, attempt=None, timeout=300):
    """Until the child (of ``attempt``, when given) reports a trained batch in ``epoch`` (1-based) or later."""
    def there():
        daemon.assert_alive()
        p = progress(daemon, name)
        return ((p.get("epoch") or 0) >= epoch and (p.get("batch") or 0) >= 1 and p.get("phase") == "training"
                and (attempt is None or p.get("attempt") == attempt))
    return wait_for(there, timeout, what=f"{name} training in epoch {epoch}")


def drill(daemon, name, kind):
    done = ctl(daemon.home, "drill", name, kind)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_drill_oom_with_reduce_batch_resumes_with_half_the_batch(daemon, dataset):
    daemon.start()
    wait_socket(daemon)
    daemon.drop(cpu_job("oom", dataset, epochs=3, on_oom="reduce_batch", min_batch=2))
    wait_training(daemon, "oom", epoch=2)
    assert "asked of the training" in drill(daemon, "oom", "oom")
    job = daemon.wait_state("oom", {"completed", "failed", "held"}, timeout=600)
    assert job.state == "completed", job.state_reason
    attempts = daemon.attempts("oom")
    assert [a.cause for a in attempts] == ["cuda_oom", "completed"]
    assert "CUDA out of memory" in attempts[0].detail and "drill" in attempts[0].detail
    assert job.batch_override == 4
    drills = [e for e in daemon.events("oom") if e.kind == "drill"]
    assert len(drills) == 1 and "drill oom" in drills[0].reason and drills[0].actor


def test_drill_nan_ends_diverged_held_at_the_newest_finite_state_and_start_resumes_there(daemon, dataset):
    """Attempt 2 resumes at epoch 3 and diverges from its first step: Ultralytics cannot recover in an attempt's first epoch
    and saves the clamped NaN weights as epoch 3, then gives up in epoch 4. The child marked that save
    non-finite: the hold names epoch 2, and `start` resumes from epoch 2, not from the clamped epoch 3."""
    daemon.start()
    wait_socket(daemon)
    spec = cpu_job("nan", dataset, epochs=5)
    spec["train"]["nbs"] = 8  # an optimizer step every batch (not every 8th): the NaN reaches the weights
    daemon.drop(spec)
    wait_training(daemon, "nan", epoch=3, attempt=1)
    drill(daemon, "nan", "kill")
    wait_for(lambda: len(daemon.attempts("nan")) == 2, 120, what="attempt 2 launched")
    drill(daemon, "nan", "nan")  # during its setup: taken at its first step, epoch 3
    job = daemon.wait_state("nan", {"completed", "failed", "held"}, timeout=600)
    assert job.state == "held", job.state_reason
    assert job.state_reason.startswith("diverged:") and "the newest is epoch 2 (" in job.state_reason
    attempts = daemon.attempts("nan")
    assert [a.cause for a in attempts] == ["killed", "diverged"]
    assert "NaN persisted" in attempts[1].detail
    assert ctl(daemon.home, "start", "nan").returncode == 0
    job = daemon.wait_state("nan", {"completed", "failed", "held"}, timeout=600)
    assert job.state == "completed", job.state_reason
    assert daemon.attempts("nan")[2].epochs_before == 2
    assert results_csv.read_epochs(Path(job.run_dir) / "results.csv") == [1, 2, 3, 4, 5]
    assert [e.reason.split(":")[0] for e in daemon.events("nan") if e.kind == "drill"] == ["drill kill", "drill nan"]


def test_drill_kill_and_term_signal_the_training_and_it_recovers(fake_daemon):
    fake_daemon.start()
    wait_socket(fake_daemon)
    fake_daemon.drop(quick_job("sig"))
    fake_daemon.wait_state("sig", "running", timeout=60)
    assert "SIGTERM" in drill(fake_daemon, "sig", "term")
    wait_for(lambda: [a.cause for a in fake_daemon.attempts("sig")][:1] == ["preempted"]
             and fake_daemon.job("sig").state == "running", 60, what="the TERM drill answered, attempt 2 running")
    assert "SIGKILL" in drill(fake_daemon, "sig", "kill")
    wait_for(lambda: [a.cause for a in fake_daemon.attempts("sig")][:2] == ["preempted", "killed"]
             and fake_daemon.job("sig").state == "running", 60, what="the KILL drill answered, attempt 3 running")
    kinds = [e.data for e in fake_daemon.events("sig") if e.kind == "drill"]
    assert len(kinds) == 2


def test_drill_refuses_a_job_without_a_process_and_an_unknown_fault(fake_daemon):
    fake_daemon.start()
    wait_socket(fake_daemon)
    fake_daemon.drop(quick_job("idle"))
    fake_daemon.wait_state("idle", "running", timeout=60)
    bad = ctl(fake_daemon.home, "drill", "idle", "meteor")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert ctl(fake_daemon.home, "stop", "idle", "--wait").returncode == 0
    stopped = ctl(fake_daemon.home, "drill", "idle", "oom")
    assert stopped.returncode == 5 and "cannot drill oom in a job that is stopped" in stopped.stderr


def test_drill_corrupt_then_hang_each_is_recovered_from(daemon, dataset):
    """`corrupt` truncates last.pt after a save: killed then, the next attempt resumes from the vault's
    verified copy. `hang` freezes a step: the stall rule kills it, and the job still completes."""
    from supervisor.probes.checkpoint import CkptKind, inspect_checkpoint

    daemon.start()
    wait_socket(daemon)
    spec = cpu_job("frozen", dataset, epochs=6, health={"stall_timeout": 20, "stop_grace": 2})
    spec["train"]["batch"] = 4  # 4 steps an epoch: room for a drill to land inside the training
    daemon.drop(spec)
    wait_training(daemon, "frozen", epoch=2)
    drill(daemon, "frozen", "corrupt")
    last = Path(daemon.job("frozen").run_dir) / "weights" / "last.pt"
    wait_for(lambda: inspect_checkpoint(last).kind is CkptKind.CORRUPT, 300, interval=0.01,
             what="last.pt truncated after a save")
    os.kill(daemon.job("frozen").pid, signal.SIGKILL)  # before the next save rewrites it
    wait_training(daemon, "frozen", attempt=2)
    drill(daemon, "frozen", "hang")
    job = daemon.wait_state("frozen", {"completed", "failed", "held"}, timeout=600)
    assert job.state == "completed", job.state_reason
    attempts = daemon.attempts("frozen")
    assert [a.cause for a in attempts] == ["killed", "stalled", "completed"]
    events = [e.reason for e in daemon.events("frozen")]
    assert any("last.pt corrupt" in r and "restored verified copy" in r for r in events), events
    assert any("drill hang" in r and "injected now" in r for r in events), events
    assert results_csv.read_epochs(Path(job.run_dir) / "results.csv") == [1, 2, 3, 4, 5, 6]
