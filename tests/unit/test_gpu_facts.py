"""Who holds a GPU: our jobs by their recorded set, processes by their environment marker."""

import os
import subprocess
import sys

import pytest

from supervisor.daemon import gpus as gpu_facts
from supervisor.jobs.spec import parse_spec
from supervisor.probes.gpu import FakeGpuProbe
from supervisor.process.launcher import DAEMON_ENV, JOB_ENV
from supervisor.store import JobRecord

DAEMON = "/var/lib/yolo-supervisor"


def record(name, state, devices=None, created=0.0) -> JobRecord:
    return JobRecord(name=name, spec_yaml="", source=None, state=state, state_reason=None, created_at=created,
                     updated_at=created, owner_uid=None, owner_gid=None, run_dir=None, pid=None,
                     pid_start_time=None, attempts=1, crash_restarts=0, no_progress_streak=0, backoff_level=0,
                     next_start_at=None, epochs_done=0, last_cause=None, batch_override=None, devices=devices)


def spec(**top):
    train = {"model": "yolov8n.yaml", "data": "d.yaml", "epochs": 1}
    if "device" in top:
        train["device"] = top.pop("device")
    return parse_spec({"name": "j", "train": train, **top})


@pytest.fixture
def marked_process():
    """A real process carrying job "ours"'s marker of this daemon, as every attempt's processes do."""
    env = dict(os.environ, **{JOB_ENV: "ours", DAEMON_ENV: DAEMON})
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    yield proc
    proc.kill()
    proc.wait()


def test_a_job_keeps_its_set_while_it_has_a_process_or_backs_off():
    jobs = [(record("run", "running", "0,1"), spec(gpus=2)), (record("back", "backoff", "2"), spec(gpus=1)),
            (record("wait", "queued", "3"), spec(gpus=1)), (record("held", "held", "4"), spec(gpus=1)),
            (record("named", "starting"), spec(device="5"))]
    held = gpu_facts.held_by_jobs(jobs, live=[])
    assert {g: h.job for g, h in held.items()} == {0: "run", 1: "run", 2: "back", 5: "named"}
    assert gpu_facts.held_by_jobs(jobs, live=["wait"])[3].job == "wait", "an attempt that is ending holds it"


def test_memory_holders_are_told_apart_by_their_marker(marked_process):
    probe = FakeGpuProbe(3)
    probe.set_memory_holders(0, {marked_process.pid: 5000})   # our job "ours"
    probe.set_memory_holders(1, {os.getpid(): 3000})          # not ours: no marker
    probe.set_memory_holders(2, {os.getpid(): 100})           # not ours, but under the limit
    held = gpu_facts.held_by_processes(probe, [0, 1, 2], DAEMON, foreign_limit_mib=1024)
    assert held[0].job == "ours" and "not released" in held[0].why
    assert held[1].job is None and held[1].why == f"pids {os.getpid()} (3000 MiB), not our jobs"
    assert 2 not in held
    other = gpu_facts.held_by_processes(probe, [0], "/another/daemon", foreign_limit_mib=1024)
    assert other[0].job is None, "another daemon's job is foreign to this one"


def test_the_recorded_set_wins_over_the_request():
    assert gpu_facts.request_for(record("a", "queued", "3,4"), spec(gpus=2)).pinned == (3, 4)
    assert gpu_facts.request_for(record("a", "queued"), spec(gpus=2)).count == 2
    assert gpu_facts.request_for(record("a", "queued"), spec(device="1,2")).pinned == (1, 2)
    assert not gpu_facts.request_for(record("a", "queued"), spec()).needs_gpus
    assert gpu_facts.inventory(None, FakeGpuProbe(4)) == [0, 1, 2, 3]
    assert gpu_facts.inventory([3, 1], FakeGpuProbe(4)) == [1, 3]
    assert gpu_facts.inventory(None, None) == []
