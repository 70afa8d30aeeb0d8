"""Health end to end: preemption with notice, hang detection, GPU holds, OOM policy, orphans.

Real training where training is the point (SIGTERM, SIGSTOP); a daemon in this
process with the fake NVML probe where a GPU cannot exist here.
"""

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from supervisor import results_csv
from supervisor.contract import read_json
from supervisor.daemon.core import Daemon
from supervisor.jobs.states import Cause
from supervisor.paths import Home
from supervisor.probes.gpu import FakeGpuProbe
from tests.conftest import cpu_job, kill_job_processes, pump, wait_for


def progress(home: Path, name: str) -> dict:
    return read_json(home / "jobs" / name / "progress.json") or {}


def in_training(home, name, epoch):
    def check():
        p = progress(home, name)
        return (p.get("epoch") or 0) >= epoch and (p.get("batch") or 0) >= 1 and p.get("phase") == "training"
    return check


# -- real training ---------------------------------------------------------------

def test_sigterm_mid_epoch_saves_a_resumable_checkpoint_and_resumes(daemon, dataset):
    spec = cpu_job("preempt", dataset, epochs=4)
    spec["train"]["batch"] = 2  # 8 batches an epoch: the SIGTERM lands mid-epoch
    daemon.start()
    daemon.drop(spec)
    wait_for(in_training(daemon.home, "preempt", 3), 300, interval=0.02, what="epoch 3 under way")
    os.kill(daemon.job("preempt").pid, signal.SIGTERM)

    job = daemon.wait_state("preempt", "completed")
    first, *rest = daemon.attempts("preempt")
    assert first.cause == "preempted" and first.exit_code == 75, (first.cause, first.detail)
    assert "mid-epoch save" in first.detail
    # the checkpoint holds the last *completed* epoch (2) with its optimizer, so resume redoes epoch 3 only
    assert first.epochs_after == 2
    assert rest[0].epochs_before == 2 and rest[0].resumed_from
    assert [a.cause for a in rest] == ["completed"]
    assert job.crash_restarts == 0, "a preemption does not consume the crash budget"
    assert results_csv.read_epochs(Path(job.run_dir) / "results.csv") == [1, 2, 3, 4]


def test_a_frozen_process_is_killed_as_stalled_and_the_job_completes(daemon, dataset):
    spec = cpu_job("frozen", dataset, epochs=3, health={"stall_timeout": 10, "stop_grace": 1})
    daemon.start()
    daemon.drop(spec)
    wait_for(in_training(daemon.home, "frozen", 2), 300, interval=0.02, what="epoch 2 under way")
    frozen_pid = daemon.job("frozen").pid
    os.kill(frozen_pid, signal.SIGSTOP)

    job = daemon.wait_state("frozen", "completed")
    first, second = daemon.attempts("frozen")
    assert first.pid == frozen_pid and first.cause == "stalled"
    assert "no progress for" in first.detail
    assert second.cause == "completed" and second.epochs_before >= 1
    assert not psutil.pid_exists(frozen_pid) or psutil.Process(frozen_pid).status() == psutil.STATUS_ZOMBIE
    assert results_csv.read_epochs(Path(job.run_dir) / "results.csv") == [1, 2, 3]


# -- a daemon in this process, fake trainers, fake NVML ------------------------------

RUN_FOREVER = """
import time
reporter.state["first_batch_at"] = time.time()
while True:
    reporter.beat(phase="training", epoch=1, batch=1, batches=10)
    time.sleep(0.05)
"""

OOM_ONCE = """
import sys, time
if plan["attempt"] == 1:
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
    reporter.exit_record(1, exception="OutOfMemoryError")
    sys.exit(1)
reporter.state["first_batch_at"] = time.time()
while True:
    reporter.beat(phase="training", epoch=1, batch=1, batches=10)
    time.sleep(0.05)
"""

SPAWN_ORPHAN = """
import os, subprocess, sys, time
if plan["attempt"] == 1:
    # like torchrun's workers: a new session, so the trainer's process group misses it
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    open(os.environ["ORPHAN_PID_FILE"], "w").write(str(worker.pid))
reporter.state["first_batch_at"] = time.time()
while True:
    reporter.beat(phase="training", epoch=1, batch=1, batches=10)
    time.sleep(0.05)
"""


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def local(tmp_path, monkeypatch):
    """A daemon in this process whose training child runs a scripted fake (``use(script)``)."""
    made = []

    def make(script: str, probe=None) -> Daemon:
        path = tmp_path / "fake.py"
        path.write_text(script)
        monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(path))
        d = Daemon(Home(tmp_path / "home"), gpu_probe=probe)
        d.start()
        made.append(d)
        return d

    yield make
    for d in made:
        for name in list(d.running):
            kill_job_processes(name)
        d.shutdown()


def gpu_job(name="g", device="0", **extra):
    spec = {"name": name, "train": {"model": "yolov8n.yaml", "data": "d.yaml", "epochs": 3, "device": device,
                                    "batch": 16},
            "restart": {"backoff": {"initial": 0, "max": 0, "factor": 1}, "max_no_progress": 10}}
    spec.update(extra)
    return yaml.safe_dump(spec)


def state(d, name="g"):
    return d.store.get_job(name).state


def test_a_job_on_an_unhealthy_gpu_is_held_and_starts_when_healthy_again(local):
    probe = FakeGpuProbe(2)
    probe.set_ecc(0, 3)
    d = local(RUN_FOREVER, probe)
    d.submit(gpu_job(), source="test")
    pump(d, lambda: state(d) == "held", what="held")
    assert "uncorrectable ECC" in d.store.get_job("g").state_reason
    assert d.store.attempts("g") == [], "nothing starts on an unhealthy device"

    probe.set_ecc(0, 0)
    pump(d, lambda: state(d) == "running", what="running again")
    reasons = [e.reason for e in d.store.events("g") if e.kind == "gpu"]
    assert any("ECC" in r for r in reasons) and "devices healthy again" in reasons


def test_an_xid_during_training_holds_the_job_until_the_quarantine_ends(local):
    clock = Clock()
    probe = FakeGpuProbe(1, clock=clock, xid_quarantine_s=300)
    d = local(RUN_FOREVER, probe)
    d.submit(gpu_job(), source="test")
    pump(d, lambda: state(d) == "running", what="running")
    probe.inject_xid(0, 79)
    os.kill(d.store.get_job("g").pid, signal.SIGKILL)  # the training dies with its GPU
    pump(d, lambda: state(d) == "held", what="held after XID 79")
    assert "XID 79" in d.store.get_job("g").state_reason
    assert any("XID 79" in e.reason for e in d.store.events("g") if e.kind == "gpu")
    assert len(d.store.attempts("g")) == 1

    clock.now += 301
    pump(d, lambda: state(d) == "running", what="back to running after the quarantine")
    assert len(d.store.attempts("g")) == 2


def test_cuda_oom_with_reduce_batch_halves_the_batch_on_resume(local):
    d = local(OOM_ONCE, FakeGpuProbe(1))
    d.submit(gpu_job(on_oom="reduce_batch", min_batch=4), source="test")
    pump(d, lambda: len(d.store.attempts("g")) == 2 and state(d) == "running", what="second attempt")
    first = d.store.attempts("g")[0]
    assert first.cause == Cause.CUDA_OOM.value and "CUDA out of memory" in first.detail
    assert d.store.get_job("g").batch_override == 8
    plan = read_json(d.home.job_plan("g"))
    assert plan["train"]["batch"] == 8 and plan["overrides"]["batch"] == 8
    batch_events = [e for e in d.store.events("g") if e.kind == "batch"]
    assert batch_events and "batch 16 -> 8" in batch_events[0].reason


def test_cuda_oom_by_default_retries_as_is(local):
    d = local(OOM_ONCE, FakeGpuProbe(1))
    d.submit(gpu_job(), source="test")
    pump(d, lambda: len(d.store.attempts("g")) == 2 and state(d) == "running", what="second attempt")
    assert d.store.attempts("g")[0].cause == "cuda_oom"
    assert d.store.get_job("g").batch_override is None


def test_no_process_of_the_previous_attempt_survives_a_relaunch(local, tmp_path, monkeypatch):
    pid_file = tmp_path / "orphan.pid"
    monkeypatch.setenv("ORPHAN_PID_FILE", str(pid_file))
    d = local(SPAWN_ORPHAN)
    d.submit(gpu_job(device="cpu"), source="test")
    pump(d, lambda: pid_file.exists() and pid_file.read_text() and state(d) == "running", what="worker spawned")
    orphan = int(pid_file.read_text())
    assert psutil.Process(orphan).status() != psutil.STATUS_ZOMBIE
    os.kill(d.store.get_job("g").pid, signal.SIGKILL)
    pump(d, lambda: len(d.store.attempts("g")) == 2, what="relaunch")
    gone = not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
    assert gone, "the worker in its own session was killed before the relaunch"
