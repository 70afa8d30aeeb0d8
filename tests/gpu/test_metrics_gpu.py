"""``yolo_supervisor_gpu_healthy`` from a real daemon on a real GPU host. Skipped where NVML finds no device."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_socket


def _device_count() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0


DEVICES = _device_count()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICES == 0, reason="needs an NVIDIA GPU (NVML)")]


def test_every_gpu_has_a_health_series(daemon):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon.home.mkdir(parents=True)
    (daemon.home / "config.yaml").write_text(f"metrics_address: {port}\n")
    daemon.start()
    wait_socket(daemon)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "yolo_supervisor_gpu_healthy"]
    healthy = {s.labels["gpu"]: s.value for s in family.samples}
    assert sorted(healthy, key=int) == [str(i) for i in range(DEVICES)]
    assert all(v == 1 for v in healthy.values()), (healthy, text)  # a GPU lent for tests is healthy
