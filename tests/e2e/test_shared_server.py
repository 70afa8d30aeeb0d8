"""A shared GPU server end to end: jobs placed on free GPUs, never two on one, in queue order,
each kept on its own set, moved off a failed GPU when asked.

No GPU exists here: the daemon's inventory comes from its config (``gpus``), foreign memory and
health from the fake NVML probe, and the children are real processes running the test-only fake
trainer, which records the device its plan gave it. Every check reads those records.
"""

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from supervisor.daemon.config import DaemonConfig
from supervisor.daemon.core import Daemon
from supervisor.jobs.spec import SpecError
from supervisor.paths import Home
from supervisor.placement import queue_order
from supervisor.probes.gpu import FakeGpuProbe
from tests.conftest import FAKE_DATA, FAKE_TRAINER, ctl, kill_job_processes, pump, wait_for, wait_socket

# Records what the plan gave the attempt, then trains for GPU_HOLD_S (jobs named long-* until
# the RELEASE file exists). Lines under 4 KiB appended with O_APPEND do not interleave.
RECORDING_TRAINER = """
import json, os, time
records = os.environ["GPU_RECORDS"]

def record(kind):
    line = {"job": plan["job"], "attempt": plan["attempt"], "device": plan["train"]["device"],
            "override": plan["overrides"]["device"], "kind": kind, "at": time.time()}
    with open(records, "a") as f:
        f.write(json.dumps(line) + "\\n")

record("start")
reporter.state["first_batch_at"] = time.time()
end = time.time() + float(os.environ["GPU_HOLD_S"])
while time.time() < end or (plan["job"].startswith("long") and not os.path.exists(os.environ["RELEASE"])):
    reporter.beat(phase="training", epoch=1, batch=1, batches=1)
    time.sleep(0.05)  # the fake workload's pace, not synchronisation
record("end")
"""


@pytest.fixture
def shared(tmp_path, monkeypatch):
    """``make(gpus, probe)``: a daemon in this process scheduling onto that inventory."""
    script = tmp_path / "recording_trainer.py"
    script.write_text(RECORDING_TRAINER)
    records = tmp_path / "records.jsonl"
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(script))
    monkeypatch.setenv("GPU_RECORDS", str(records))
    monkeypatch.setenv("GPU_HOLD_S", "0.6")
    monkeypatch.setenv("RELEASE", str(tmp_path / "release"))
    made = []

    def make(gpus, probe=None) -> Daemon:
        d = Daemon(Home(tmp_path / "home"), DaemonConfig(gpus=gpus), gpu_probe=probe)
        d.start()
        d.records = records
        d.release = tmp_path / "release"
        made.append(d)
        return d

    yield make
    (tmp_path / "release").touch()
    for d in made:
        for name in list(d.running):
            kill_job_processes(name)
        d.shutdown()


def job(name, device=None, gpus=None, priority=0, **extra) -> str:
    train = {"model": "yolov8n.yaml", "data": str(FAKE_DATA), "epochs": 1}
    if device is not None:
        train["device"] = device
    spec = {"name": name, "train": train, "priority": priority,
            "restart": {"backoff": {"initial": 0, "max": 0, "factor": 1}, "max_no_progress": 10}}
    if gpus is not None:
        spec["gpus"] = gpus
    spec.update(extra)
    return yaml.safe_dump(spec)


def records(d) -> list[dict]:
    if not d.records.exists():
        return []
    return [json.loads(line) for line in d.records.read_text().splitlines() if line.strip()]


def intervals(d) -> dict[tuple[str, int], dict]:
    """(job, attempt) -> the GPUs its plan gave it and when it held them, from the children's records."""
    out: dict[tuple[str, int], dict] = {}
    for r in records(d):
        key = (r["job"], r["attempt"])
        item = out.setdefault(key, {"device": r["device"], "override": r["override"], "start": r["at"]})
        item["last"] = r["at"]
    return out


def assert_no_gpu_shared(d) -> None:
    by_gpu: dict[int, list[tuple[float, float, str]]] = {}
    for (name, attempt), item in intervals(d).items():
        assert item["device"] == item["override"], "the plan's train and resume devices agree"
        for gpu in item["device"].split(","):
            by_gpu.setdefault(int(gpu), []).append((item["start"], item["last"], f"{name}#{attempt}"))
    for gpu, spans in by_gpu.items():
        spans.sort()
        for (_s1, end1, a), (start2, _e2, b) in zip(spans, spans[1:]):
            assert start2 >= end1, f"GPU {gpu} shared: {a} still on it when {b} started"


def states(d) -> dict[str, str]:
    return {j.name: j.state for j in d.store.list_jobs()}


def record_launch_decisions(d: Daemon) -> list[str]:
    """The jobs in the order the loop decided to launch them (a launch handed to a worker)."""
    decided: list[str] = []
    real_launch = d.launches.launch

    def launch(name, actor=None, gpus=()):
        real_launch(name, actor, gpus)
        if name in d.launches.launching and name not in decided:
            decided.append(name)
    d.launches.launch = launch
    return decided


def test_twenty_jobs_on_eight_gpus_never_share_keep_queue_order_and_all_finish(shared):
    d = shared(list(range(8)), FakeGpuProbe(8))
    explicit = {"e0": "0", "e1": "1,2", "e2": "0", "e3": "3", "e4": "6,7", "e5": "1"}
    counts = {**{f"one{i}": 1 for i in range(8)}, **{f"two{i}": 2 for i in range(4)}, "four0": 4}
    for name, device in explicit.items():
        d.submit(job(name, device=device), source="test")
    for name, n in counts.items():
        d.submit(job(name, gpus=n), source="test")
    d.submit(job("urgent", gpus=4, priority=10), source="test")  # submitted last, placed first
    assert len(states(d)) == 20
    decided = record_launch_decisions(d)
    pump(d, lambda: set(states(d).values()) == {"completed"}, timeout=180, what="all 20 jobs completed")

    assert_no_gpu_shared(d)
    given = {name: item["device"] for (name, _a), item in intervals(d).items()}
    for name, device in explicit.items():
        assert given[name] == device
    for name, n in {**counts, "urgent": 4}.items():
        assert len(set(given[name].split(","))) == n, (name, given[name])
        assert d.store.get_job(name).devices == given[name], "the set is recorded on the job"
    # Jobs asking for any N GPUs start in queue order (priority, then submission): none overtakes
    # one ahead of it, whatever its size, so a four-GPU job is not starved by one-GPU jobs.
    # The loop's decisions are what is ordered: each spawn then runs on a worker, and the workers
    # record their attempts in whatever order they finish (milliseconds apart).
    specs = {job.name: spec for job, spec in d.valid_specs() if spec.gpus}
    from supervisor.daemon import gpus as gpu_facts

    order = [r.job for r in queue_order(gpu_facts.request_for(d.store.get_job(n), specs[n]) for n in specs)]
    assert order[0] == "urgent"
    assert [n for n in decided if n in specs] == order, (decided, order)
    # Two jobs pinned to GPU 0: the earlier one first, the other after it left the GPU.
    assert intervals(d)[("e2", 1)]["start"] >= intervals(d)[("e0", 1)]["last"]


def test_one_gpu_jobs_arriving_behind_a_two_gpu_job_do_not_starve_it(shared):
    d = shared([0, 1])
    d.submit(job("long-x", device="0"), source="test")
    pump(d, lambda: states(d)["long-x"] == "running", what="long-x running on GPU 0")
    d.submit(job("big", gpus=2), source="test")
    for i in range(3):  # a stream of small jobs, each could run on the free GPU 1 at once
        d.submit(job(f"small{i}", gpus=1), source="test")
    pump(d, lambda: all("kept for big" in (d.store.get_job(f"small{i}").state_reason or "") for i in range(3)),
         what="GPU 1 kept for the big job")
    assert not any(d.store.attempts(f"small{i}") for i in range(3)), "no small job took the big job's GPU"

    d.release.touch()  # long-x ends: GPU 0 frees up as well
    pump(d, lambda: set(states(d).values()) == {"completed"}, what="all completed")
    big_start = d.store.attempts("big")[0].started_at
    assert all(d.store.attempts(f"small{i}")[0].started_at > big_start for i in range(3))
    assert_no_gpu_shared(d)


def test_a_killed_job_comes_back_on_its_own_set_which_nobody_takes_meanwhile(shared):
    d = shared([0, 1, 2, 3])
    d.submit(job("long-a", gpus=2, restart={"backoff": {"initial": 1.5, "max": 1.5, "factor": 1}}),
             source="test")
    d.submit(job("long-filler", device="2"), source="test")
    pump(d, lambda: states(d) == {"long-a": "running", "long-filler": "running"}, what="both running")
    d.submit(job("waiter", gpus=2), source="test")
    pump(d, lambda: "waiting for 2 free GPUs" in (d.store.get_job("waiter").state_reason or ""), what="waiter waits")

    os.kill(d.store.get_job("long-a").pid, signal.SIGKILL)
    pump(d, lambda: d.store.get_job("long-a").state == "backoff", what="long-a in backoff")
    reason = d.store.get_job("waiter").state_reason
    assert "GPU 0 (job long-a)" in reason and "GPU 1 (job long-a)" in reason, reason
    pump(d, lambda: len(d.store.attempts("long-a")) == 2 and states(d)["long-a"] == "running", what="back")
    assert intervals(d)[("long-a", 1)]["device"] == intervals(d)[("long-a", 2)]["device"] == "0,1"
    assert states(d)["waiter"] == "queued"

    d.release.touch()
    pump(d, lambda: set(states(d).values()) == {"completed"}, what="all completed")
    assert intervals(d)[("waiter", 1)]["device"] in ("0,1", "0,3", "1,3", "2,3", "0,2", "1,2")
    assert_no_gpu_shared(d)


def test_foreign_memory_makes_a_gpu_busy_and_names_the_pids(shared):
    probe = FakeGpuProbe(2)
    probe.set_memory_holders(0, {os.getpid(): 3000})  # this test process: not one of our jobs
    d = shared(None, probe)  # no `gpus` in the config: every GPU NVML sees
    d.submit(job("long-pinned", device="0"), source="test")
    d.submit(job("any", gpus=1), source="test")
    pump(d, lambda: states(d).get("any") == "completed", what="the any-GPU job done on the other GPU")
    assert intervals(d)[("any", 1)]["device"] == "1"
    reason = d.store.get_job("long-pinned").state_reason
    assert states(d)["long-pinned"] == "queued"
    assert reason == f"waiting for GPU 0 (pids {os.getpid()} (3000 MiB), not our jobs)", reason

    probe.set_memory_holders(0, {})
    pump(d, lambda: states(d)["long-pinned"] == "running", what="pinned job starts once GPU 0 is free")
    assert intervals(d)[("long-pinned", 1)]["device"] == "0"


def test_a_failed_gpu_with_on_gpu_failure_move_resumes_on_another_set_of_the_same_size(shared):
    probe = FakeGpuProbe(3)
    d = shared([0, 1, 2], probe)
    d.submit(job("long-m", gpus=1, on_gpu_failure="move", gpu_failure_wait=1), source="test")
    d.submit(job("long-w", device="1"), source="test")  # default on_gpu_failure: wait
    pump(d, lambda: states(d) == {"long-m": "running", "long-w": "running"}, what="both running")
    assert d.store.get_job("long-m").devices == "0"

    for gpu, name in ((0, "long-m"), (1, "long-w")):
        probe.inject_xid(gpu, 79)
        os.kill(d.store.get_job(name).pid, signal.SIGKILL)  # the training dies with its GPU
    pump(d, lambda: len(d.store.attempts("long-m")) == 2 and states(d)["long-m"] == "running",
         what="long-m moved and running again")
    assert intervals(d)[("long-m", 2)]["device"] == "2", "moved to the free healthy GPU, same count"
    moved = [e.reason for e in d.store.events("long-m") if e.kind == "gpu" and "moved" in e.reason]
    assert moved and moved[0].startswith("moved from GPU 0 to GPU 2"), moved
    assert states(d)["long-w"] == "held" and "XID 79" in d.store.get_job("long-w").state_reason
    assert len(d.store.attempts("long-w")) == 1, "on_gpu_failure: wait keeps the job held"


def test_a_job_the_inventory_cannot_satisfy_is_refused_at_submit(shared):
    d = shared([0, 1])
    with pytest.raises(SpecError, match="needs 3 GPUs, the daemon has 2"):
        d.submit(job("huge", gpus=3), source="test")
    with pytest.raises(SpecError, match="GPU 5 is not among the daemon's GPUs"):
        d.submit(job("lost", device="5"), source="test")
    assert states(d) == {}


@pytest.mark.slow
def test_status_and_gpus_show_each_jobs_gpus_and_who_waits_for_what(fake_daemon, monkeypatch):
    """Through the real daemon process and socket: the GPUS column, the waiting reason, and `gpus`."""
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(FAKE_TRAINER))
    fake_daemon.home.mkdir(parents=True, exist_ok=True)
    (fake_daemon.home / "config.yaml").write_text(yaml.safe_dump({"gpus": [0, 1]}))
    fake_daemon.start()
    wait_socket(fake_daemon)
    fake_daemon.drop(yaml.safe_load(job("first", gpus=2)))
    wait_for(lambda: fake_daemon.job("first") and fake_daemon.job("first").state == "running", 60,
             what="first running")
    fake_daemon.drop(yaml.safe_load(job("second", device="1")))
    wait_for(lambda: fake_daemon.job("second") and "GPU 1 (job first)" in (fake_daemon.job("second").state_reason or ""),
             60, what="second waiting for GPU 1")
    status = ctl(fake_daemon.home, "status")
    assert status.returncode == 0, status.stderr
    first_row = next(line for line in status.stdout.splitlines() if line.startswith("first "))
    assert " 0,1 " in first_row, status.stdout
    assert "second: waiting for GPU 1 (job first)" in status.stdout, status.stdout
    gpus = ctl(fake_daemon.home, "gpus", "--json")
    assert gpus.returncode == 0, gpus.stderr
    rows = json.loads(gpus.stdout)
    assert [(r["index"], r["job"], r["health"]) for r in rows] == [(0, "first", "unknown (no NVML)"),
                                                                  (1, "first", "unknown (no NVML)")]
    table = ctl(fake_daemon.home, "gpus").stdout
    assert table.splitlines()[0].split() == ["GPU", "HEALTH", "MEMORY", "UTIL", "JOB", "PIDS"]
    history = ctl(fake_daemon.home, "history", "first").stdout
    header, attempt = history.splitlines()[3:5]
    assert header.split()[4] == "GPUS" and attempt.split()[5] == "0,1", history  # START takes two columns
    ctl(fake_daemon.home, "stop", "first", "--wait", "--timeout", "60")
    wait_for(lambda: fake_daemon.job("second").state == "running", 60, what="second starts on the freed GPU")
    ctl(fake_daemon.home, "stop", "second", "--wait", "--timeout", "60")
