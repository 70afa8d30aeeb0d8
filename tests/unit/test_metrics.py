"""Prometheus metrics: the collector on a real store, then a real daemon scraped over HTTP."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.daemon.config import DaemonConfig, parse_address
from supervisor.daemon.core import Daemon
from supervisor.observe.metrics import MetricsService
from supervisor.paths import Home
from supervisor.probes.gpu import FakeGpuProbe
from tests.conftest import FAKE_DATA, cpu_job, wait_for, wait_socket

NAMES = {  # every family a scrape must have, with its type
    "yolo_supervisor_up": "gauge", "yolo_supervisor_jobs": "gauge", "yolo_supervisor_job_state": "gauge",
    "yolo_supervisor_job_epoch": "gauge", "yolo_supervisor_job_epochs": "gauge",
    "yolo_supervisor_job_epochs_done": "gauge", "yolo_supervisor_job_attempts": "counter",
    "yolo_supervisor_job_restarts": "counter", "yolo_supervisor_job_last_checkpoint_timestamp_seconds": "gauge",
    "yolo_supervisor_job_checkpoint_age_seconds": "gauge", "yolo_supervisor_job_wall_seconds": "gauge",
    "yolo_supervisor_job_startup_seconds": "gauge", "yolo_supervisor_job_training_seconds": "gauge",
    "yolo_supervisor_job_down_seconds": "gauge", "yolo_supervisor_job_paused_seconds": "gauge",
    "yolo_supervisor_job_epochs_redone": "gauge", "yolo_supervisor_job_batches_per_second": "gauge",
    "yolo_supervisor_job_batches_redone": "gauge",
    "yolo_supervisor_job_eta_seconds": "gauge", "yolo_supervisor_gpu_healthy": "gauge",
    "yolo_supervisor_loop_lag_seconds": "gauge",
}


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, frozenset of labels): value}, and every family's type checked against NAMES."""
    out = {}
    for family in text_string_to_metric_families(text):
        assert NAMES.get(family.name) == family.type, (family.name, family.type)
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: dict, name: str, **labels) -> float:
    return got[(name, frozenset(labels.items()))]


@pytest.mark.parametrize("text,expected", [
    ("9400", ("127.0.0.1", 9400)), (":9400", ("127.0.0.1", 9400)), ("0.0.0.0:9400", ("0.0.0.0", 9400)),
    ("localhost:1", ("localhost", 1)), ("[::1]:9400", ("::1", 9400)),
])
def test_address_without_a_host_is_loopback(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host:", "host:0", "host:65536", "host:http", "[zz::1]:80"])
def test_bad_addresses_are_refused(text):
    with pytest.raises(ValueError):
        parse_address(text)
    with pytest.raises(ValueError, match="metrics_address"):
        DaemonConfig(metrics_address=text)  # so a reload with a bad address is refused too


def test_collector_reads_the_store_at_scrape_time(tmp_path):
    probe = FakeGpuProbe(device_count=2)
    daemon = Daemon(Home(tmp_path / "home"), DaemonConfig(), gpu_probe=probe)
    try:
        daemon.submit("name: m1\ntrain: {model: yolov8n.yaml, data: d.yaml, epochs: 5, device: cpu}\n", "test")
        service = MetricsService(daemon)
        store = daemon.store
        one = store.start_attempt("m1", 1, pid=10, pid_start_time=1.0, epochs_before=0, resumed_from=None)
        store.mark_first_batch(one, store.get_job("m1").created_at + 1)
        store.add_event("m1", "snapshot", "verified copy of epoch 2 kept")
        store.end_attempt(one, exit_code=None, signal=9, cause="killed", detail="SIGKILL", epochs_after=2)
        store.note_epochs_reached("m1", 1, 3)  # epoch 3 trained, not saved: redone by attempt 2
        store.start_attempt("m1", 2, pid=11, pid_start_time=2.0, epochs_before=2, resumed_from="last.pt")
        store.update_job("m1", state="starting", attempts=2, epochs_done=2)
        before = time.time()
        got = samples(generate_latest(service.registry).decode())
        after = time.time()
        assert value(got, "yolo_supervisor_up") == 1
        assert value(got, "yolo_supervisor_job_state", job="m1", state="starting") == 1
        assert value(got, "yolo_supervisor_job_state", job="m1", state="running") == 0
        assert value(got, "yolo_supervisor_jobs", state="starting") == 1
        assert value(got, "yolo_supervisor_job_epochs", job="m1") == 5
        assert value(got, "yolo_supervisor_job_epochs_done", job="m1") == 2
        assert value(got, "yolo_supervisor_job_attempts_total", job="m1") == 2
        assert value(got, "yolo_supervisor_job_restarts_total", job="m1", cause="killed") == 1
        assert value(got, "yolo_supervisor_job_epochs_redone", job="m1") == 0  # attempt 2 has not got there
        # down since attempt 1 died (attempt 2 has not trained yet), to 0.1 s; the age of the snapshot event
        died = store.attempts("m1")[0].ended_at
        down = value(got, "yolo_supervisor_job_down_seconds", job="m1")
        assert before - died - 0.051 <= down <= after - died + 0.051, (down, before - died)
        snapshot_at = next(e.at for e in store.events("m1") if e.kind == "snapshot")
        assert value(got, "yolo_supervisor_job_last_checkpoint_timestamp_seconds", job="m1") == snapshot_at
        age = value(got, "yolo_supervisor_job_checkpoint_age_seconds", job="m1")
        assert before - snapshot_at <= age <= after - snapshot_at, (age, before - snapshot_at)
        assert value(got, "yolo_supervisor_gpu_healthy", gpu="0") == 1
        assert value(got, "yolo_supervisor_gpu_healthy", gpu="1") == 1

        # nothing is cached: the next scrape sees the store and the probe as they are now
        store.note_epochs_reached("m1", 2, 4)
        probe.set_lost(1)
        got = samples(generate_latest(service.registry).decode())
        assert value(got, "yolo_supervisor_job_epochs_redone", job="m1") == 1
        assert value(got, "yolo_supervisor_gpu_healthy", gpu="1") == 0
        assert value(got, "yolo_supervisor_gpu_healthy", gpu="0") == 1
    finally:
        daemon.store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return samples(r.read().decode())


def test_daemon_serves_metrics_and_writes_the_textfile(fake_daemon, tmp_path):
    port, textdir = free_port(), tmp_path / "textfile"
    fake_daemon.home.mkdir(parents=True)
    (fake_daemon.home / "config.yaml").write_text(f"metrics_address: ':{port}'\nmetrics_textfile_dir: {textdir}\n")
    fake_daemon.start()
    wait_socket(fake_daemon)
    fake_daemon.drop(cpu_job("m", FAKE_DATA, epochs=3))
    first = fake_daemon.wait_state("m", "running", timeout=60)
    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: len(fake_daemon.attempts("m")) == 2 and fake_daemon.job("m").state == "running", 60,
             what="the second attempt running")

    got = wait_for(lambda: (g := scrape(port)) and
                   g.get(("yolo_supervisor_job_restarts_total", frozenset({"job": "m", "cause": "killed"}.items())))
                   and g, 30, what="the restart in a scrape")
    assert value(got, "yolo_supervisor_up") == 1
    assert value(got, "yolo_supervisor_job_state", job="m", state="running") == 1
    assert value(got, "yolo_supervisor_job_epoch", job="m") == 1
    assert value(got, "yolo_supervisor_job_epochs", job="m") == 3
    first_end, second = fake_daemon.attempts("m")[0].ended_at, fake_daemon.attempts("m")[1]
    down = value(got, "yolo_supervisor_job_down_seconds", job="m")
    assert abs(down - (second.first_batch_at - first_end)) < 0.2
    assert value(got, "yolo_supervisor_job_training_seconds", job="m") > 0
    assert not any(k[0] == "yolo_supervisor_gpu_healthy" for k in got), "no GPU probe here: no GPU series"

    prom = textdir / "yolo_supervisor.prom"
    text = wait_for(lambda: prom.exists() and "cause=\"killed\"" in prom.read_text() and prom.read_text(), 30,
                    what="the textfile with the restart")
    assert value(samples(text), "yolo_supervisor_job_restarts_total", job="m", cause="killed") == 1
    assert [p.name for p in textdir.iterdir()] == ["yolo_supervisor.prom"], "written atomically, no leftovers"

    fake_daemon.stop()
    assert value(samples(prom.read_text()), "yolo_supervisor_up") == 0, "a stopped daemon says so"
    with pytest.raises(OSError):
        scrape(port)


def test_metrics_are_off_by_default_and_a_taken_port_stops_the_start(fake_daemon):
    fake_daemon.start()
    wait_socket(fake_daemon)
    assert "metrics served" not in fake_daemon.log.read_text()
    fake_daemon.stop()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        (fake_daemon.home / "config.yaml").write_text(f"metrics_address: {taken.getsockname()[1]}\n")
        fake_daemon.start()
        assert fake_daemon.proc.wait(30) == 1
    assert "Address already in use" in fake_daemon.log.read_text()


def test_the_daemon_side_never_imports_torch_ultralytics_or_matplotlib():
    code = ("import sys, supervisor.daemon.main, supervisor.observe.metrics, supervisor.control.handlers, "
            "supervisor.control.cli\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ultralytics', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
