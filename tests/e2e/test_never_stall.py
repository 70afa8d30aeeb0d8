"""Nothing a job does can stall supervision (issue 20), end to end: a real daemon, its real
socket, the CLI as a subprocess, the test-only fake trainer."""

import os

import yaml

from tests.conftest import FAKE_DATA, ctl, wait_for, wait_socket


def submit(daemon, tmp_path, name: str, data: str) -> None:
    spec = {"name": name, "train": {"model": "yolov8n.yaml", "data": data, "epochs": 2, "device": "cpu"}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = ctl(daemon.home, "submit", str(path))
    assert done.returncode == 0, done.stderr


def test_fifo_datasets_do_not_hold_up_another_users_job_or_status(fake_daemon, tmp_path):
    # Before: each FIFO's preflight ran on the loop until its 10 s deadline, so six of them kept
    # every other job from starting, and status calls from being answered, for a minute a round.
    daemon = fake_daemon
    daemon.start()
    wait_socket(daemon)
    fifo = tmp_path / "data.yaml"
    os.mkfifo(fifo)
    for i in range(6):
        submit(daemon, tmp_path, f"fifo{i}", str(fifo))
    submit(daemon, tmp_path, "good", str(FAKE_DATA))

    def good_running():
        done = ctl(daemon.home, "status", "good", timeout=20)
        assert done.returncode == 0, f"status failed while FIFO jobs were checked: {done.stderr}"
        return daemon.job("good").state == "running"
    wait_for(good_running, 40, interval=0.2, what="the good job to run while the FIFO jobs are checked")
    for i in range(6):
        job = daemon.wait_state(f"fifo{i}", "held", timeout=60)
        assert "not a readable plain file" in job.state_reason
    assert ctl(daemon.home, "stop", "good").returncode == 0
    daemon.wait_state("good", "stopped", timeout=60)
