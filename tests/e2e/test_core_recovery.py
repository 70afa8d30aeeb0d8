"""End to end: a real daemon, real Ultralytics training on CPU, real signals and files."""

import os
import signal
from pathlib import Path

import pytest

from supervisor import results_csv
from supervisor.contract import read_json
from tests.conftest import cpu_job, wait_for


def progress(daemon, name):
    return read_json(daemon.home / "jobs" / name / "progress.json") or {}


def wait_training_in_epoch(daemon, name, epoch, timeout=240):
    """Until the child reports a trained batch in ``epoch`` (1-based) or later."""
    return wait_for(lambda: ((p := progress(daemon, name)).get("epoch") or 0) >= epoch and (p.get("batch") or 0) >= 1
                    and p.get("phase") == "training", timeout, what=f"{name} training in epoch {epoch}")


def assert_every_epoch_once(job, epochs):
    got = results_csv.read_epochs(Path(job.run_dir) / "results.csv")
    assert got == list(range(1, epochs + 1)), got


def test_sigkill_mid_run_resumes_and_completes(daemon, dataset):
    daemon.start()
    daemon.drop(cpu_job("killed", dataset, epochs=4))
    wait_training_in_epoch(daemon, "killed", 3)
    first = daemon.job("killed")
    os.kill(first.pid, signal.SIGKILL)

    job = daemon.wait_state("killed", "completed")
    attempts = daemon.attempts("killed")
    assert [a.cause for a in attempts] == ["killed", "completed"]
    assert attempts[0].signal == signal.SIGKILL
    assert attempts[1].resumed_from == str(Path(job.run_dir) / "weights" / "last.pt")
    assert attempts[1].epochs_before >= 2  # resumed, not restarted from scratch
    assert_every_epoch_once(job, 4)


def test_truncated_last_pt_is_restored_from_the_verified_copy(daemon, dataset):
    daemon.start()
    daemon.drop(cpu_job("trunc", dataset, epochs=5))
    vault = daemon.home / "jobs" / "trunc" / "checkpoints"
    wait_for(lambda: any(vault.glob("epoch-*.pt")) and (progress(daemon, "trunc").get("epoch") or 0) >= 3,
             240, what="a verified copy and epoch 3 under way")
    job = daemon.job("trunc")
    last = Path(job.run_dir) / "weights" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # what a kill during Ultralytics' write_bytes leaves
    os.kill(job.pid, signal.SIGKILL)

    job = daemon.wait_state("trunc", "completed")
    notes = [e.reason for e in daemon.events("trunc") if e.kind == "checkpoint"]
    assert any("restored verified copy" in n for n in notes), notes
    assert list(last.parent.glob("last.pt.corrupt-*")), "the corrupt file is kept aside, not deleted"
    attempts = daemon.attempts("trunc")
    assert [a.cause for a in attempts] == ["killed", "completed"]
    assert attempts[1].epochs_before >= 1
    assert_every_epoch_once(job, 5)


def test_a_dataset_without_images_is_a_config_error_and_not_retried(daemon, tmp_path):
    daemon.start()
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    data = empty / "data.yaml"
    data.write_text(f"path: {empty}\ntrain: images\nval: images\nnames: {{0: thing}}\n")
    daemon.drop(cpu_job("nodata", data, epochs=2))
    job = daemon.wait_state("nodata", "failed", timeout=120)
    attempts = daemon.attempts("nodata")
    assert len(attempts) == 1
    assert attempts[0].cause == "config_error"
    assert "not retried" in job.state_reason


def test_a_missing_dataset_holds_the_job_without_an_attempt_until_it_appears(daemon, dataset, tmp_path):
    """An NFS mount not back yet after a reboot: nothing is spawned, no budget used, no failure."""
    (daemon.home).mkdir(parents=True, exist_ok=True)
    (daemon.home / "config.yaml").write_text("preflight_recheck_s: 0.5\n")
    later = tmp_path / "mount"
    data = later / "data.yaml"
    daemon.start()
    daemon.drop(cpu_job("nfs", data, epochs=2))
    job = daemon.wait_state("nfs", "held", timeout=60)
    assert str(data) in job.state_reason and "edit nfs data=" in job.state_reason
    assert daemon.attempts("nfs") == []
    import shutil

    shutil.copytree(dataset.parent, later)                    # the mount comes back
    data.write_text(dataset.read_text().replace(str(dataset.parent), str(later)))
    job = daemon.wait_state("nfs", "completed", timeout=300)
    assert [a.cause for a in daemon.attempts("nfs")] == ["completed"] and job.crash_restarts == 0


def test_a_real_oom_kill_is_host_oom_from_the_kernel_log(daemon, monkeypatch):
    """The kernel's own OOM killer, at the limit of a memory cgroup the child is moved into."""
    from tests.conftest import FAKE_DATA
    from tests.oom import kmsg_problem, memory_cgroup

    problem = kmsg_problem()
    if problem:
        pytest.skip(problem)
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(Path(__file__).with_name("hungry_trainer.py")))
    with memory_cgroup(64 << 20) as group:
        daemon.start()
        daemon.drop(cpu_job("oom", FAKE_DATA, epochs=2, restart={"max_restarts": 0}))
        job = daemon.wait_state("oom", "running", timeout=120)
        group.add(job.pid)
        ended = wait_for(lambda: [a for a in daemon.attempts("oom") if a.cause], 120, what="the attempt's end")
    first = ended[0]
    assert (first.cause, first.signal) == ("host_oom", signal.SIGKILL), (first.cause, first.detail)
