"""What a daemon restart must not lose, and what a second daemon must not touch (issue 10, reliability).

Real daemons (SIGKILLed and started again), real children (the test-only trainers), real signals.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import FAKE_DATA, DaemonProcess, ctl, cpu_job, kill_job_processes, wait_for, wait_socket

STUBBORN = Path(__file__).parent / "stubborn_trainer.py"


def job_file(tmp_path: Path, name: str, grace: float = 60) -> Path:
    spec = cpu_job(name, FAKE_DATA, epochs=2, health={"stop_grace": grace})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def stubborn_daemon(daemon, monkeypatch):
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(STUBBORN))
    return daemon


def restart_daemon(daemon: DaemonProcess) -> None:
    """SIGKILL the daemon (the training lives on) and start a new one on the same home."""
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(30)
    daemon.start()
    wait_for(lambda: ctl(daemon.home, "status").returncode == 0, 30, what="the new daemon answering")


def test_a_stop_survives_a_daemon_restart_while_the_child_saves(stubborn_daemon, tmp_path):
    d = stubborn_daemon
    d.start()
    wait_socket(d)
    assert ctl(d.home, "submit", str(job_file(tmp_path, "slow"))).returncode == 0
    pid = d.wait_state("slow", "running", timeout=60).pid
    assert ctl(d.home, "stop", "slow").returncode == 0
    d.wait_state("slow", "stopping", timeout=30)
    restart_daemon(d)
    (d.home / "jobs" / "slow" / "release").touch()  # the save finishes: the child exits 75
    job = d.wait_state("slow", {"stopped", "backoff", "queued", "starting", "running"}, timeout=60)
    assert job.state == "stopped", f"{job.state}: {job.state_reason}"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert len(d.attempts("slow")) == 1


def test_a_stop_recorded_but_not_yet_signalled_is_signalled_by_the_next_daemon(stubborn_daemon, tmp_path):
    """The stop's record is written before its SIGTERM (sent from a worker). A daemon killed between
    the two leaves a child that was never asked to stop: the next daemon sends the TERM, so the
    child saves and exits now, not SIGKILLed unsaved when the grace runs out."""
    d = stubborn_daemon
    d.start()
    wait_socket(d)
    assert ctl(d.home, "submit", str(job_file(tmp_path, "slow", grace=600))).returncode == 0
    pid = d.wait_state("slow", "running", timeout=60).pid
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(30)
    store = d.store()
    try:  # what the killed daemon had written: the job stopping by the user, SIGKILL in 600 s
        attempt = store.open_attempt("slow")
        store.set_stop_intent(attempt.id, cause="stopped", detail=None, by_user=True, then=None,
                              kill_at=time.time() + 600)
        store.update_job("slow", state="stopping", state_reason="stop requested by test")
    finally:
        store.close()
    (d.home / "jobs" / "slow" / "release").touch()  # the child saves at once once asked
    d.start()
    job = d.wait_state("slow", {"stopped", "backoff", "queued", "starting", "running", "failed"}, timeout=60)
    assert job.state == "stopped", f"{job.state}: {job.state_reason}"
    kinds = [(e.kind, e.reason or "") for e in d.events("slow")]
    adopted = next(i for i, (kind, _) in enumerate(kinds) if kind == "adopted")
    assert any(kind == "signal" and "SIGTERM" in message for kind, message in kinds[adopted:]), kinds
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_child_that_ignores_term_is_killed_after_a_daemon_restart(stubborn_daemon, tmp_path):
    d = stubborn_daemon
    d.start()
    wait_socket(d)
    assert ctl(d.home, "submit", str(job_file(tmp_path, "ignore-term", grace=3))).returncode == 0
    d.wait_state("ignore-term", "running", timeout=60)
    assert ctl(d.home, "stop", "ignore-term").returncode == 0
    d.wait_state("ignore-term", "stopping", timeout=30)
    restart_daemon(d)
    job = d.wait_state("ignore-term", "stopped", timeout=30)  # the grace of 3 s ran on across the restart
    assert "stopped" in (job.last_cause or "")
    kill_job_processes("ignore-term")


def test_two_daemons_with_a_job_of_the_same_name_leave_each_others_training_alone(tmp_path, monkeypatch):
    from tests.conftest import FAKE_TRAINER

    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(FAKE_TRAINER))
    first, second = DaemonProcess(tmp_path / "a"), DaemonProcess(tmp_path / "b")
    try:
        first.start()
        wait_socket(first)
        assert ctl(first.home, "submit", str(job_file(tmp_path, "same"))).returncode == 0
        pid = first.wait_state("same", "running", timeout=60).pid
        second.start()
        wait_socket(second)
        assert ctl(second.home, "submit", str(job_file(tmp_path, "same"))).returncode == 0
        other = second.wait_state("same", "running", timeout=60)
        assert other.pid != pid
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE, "the second daemon killed the first's job"
        assert not [e for e in second.events("same") if e.kind == "orphans"]
        job = first.job("same")
        assert (job.state, job.pid, job.attempts) == ("running", pid, 1)
    finally:
        for d in (first, second):
            d.stop()
        kill_job_processes("same")


def test_restart_of_a_job_in_backoff_waits_for_a_free_slot(daemon, tmp_path, monkeypatch):
    from tests.conftest import FAKE_TRAINER

    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(FAKE_TRAINER))
    daemon.home.mkdir(parents=True)
    (daemon.home / "config.yaml").write_text("max_running: 1\n")
    daemon.start()
    wait_socket(daemon)
    slow = cpu_job("b", FAKE_DATA, epochs=2)
    slow["restart"] = {"backoff": {"initial": 300, "max": 300, "factor": 2}}
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(slow))
    assert ctl(daemon.home, "submit", str(path)).returncode == 0
    pid = daemon.wait_state("b", "running", timeout=60).pid
    psutil.Process(pid).kill()
    daemon.wait_state("b", "backoff", timeout=30)  # 300 s before its next attempt
    assert ctl(daemon.home, "submit", str(job_file(tmp_path, "a"))).returncode == 0
    daemon.wait_state("a", "running", timeout=60)  # the one slot
    assert ctl(daemon.home, "restart", "b").returncode == 0
    assert daemon.job("b").state == "backoff" and len(daemon.attempts("b")) == 1, "max_running: 1 was bypassed"
    assert ctl(daemon.home, "stop", "--wait", "--timeout", "30", "a").returncode == 0
    daemon.wait_state("b", {"starting", "running"}, timeout=30)  # at once, not after 300 s
