"""NvmlProbe against a real NVIDIA GPU. Skipped (not errored) where NVML finds no device.

The test process itself never imports torch; a subprocess does, to hold GPU memory.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import pytest

from supervisor.probes.gpu import NvmlProbe, wait_for_memory_release


def _nvml_devices() -> tuple[int, str]:
    """(device count, why none) -- never raises."""
    try:
        import pynvml
    except ImportError as e:
        return 0, f"nvidia-ml-py not importable: {e}"
    try:
        pynvml.nvmlInit()
    except Exception as e:
        return 0, f"NVML cannot initialise here: {e}"
    try:
        n = int(pynvml.nvmlDeviceGetCount())
        return n, "" if n else "NVML found no GPU"
    except Exception as e:
        return 0, f"NVML cannot count devices: {e}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


DEVICE_COUNT, NO_GPU_REASON = _nvml_devices()

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE_COUNT == 0, reason=f"needs an NVIDIA GPU: {NO_GPU_REASON}"),
]


def poll(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def probe():
    p = NvmlProbe.open()
    yield p
    p.close()


def test_real_readings_every_device(probe):
    assert probe.available()
    assert probe.device_count == DEVICE_COUNT
    indices = list(range(DEVICE_COUNT))
    for i in indices:
        r = probe.read(i)
        assert r.unreachable is None, r.unreachable
        assert r.memory_total_mib and r.memory_total_mib > 1024, r
        assert r.memory_used_mib is not None and 0 <= r.memory_used_mib <= r.memory_total_mib, r
        if r.temperature_c is not None:
            assert 5 <= r.temperature_c <= 110, r
        if r.slowdown_c is not None:
            assert 60 <= r.slowdown_c <= 130, r
        assert probe.used_memory_mib(i) >= 0
        assert isinstance(probe.memory_holders(i), dict)
    health = probe.check(indices, set())
    for i in indices:
        h = health[i]
        assert h.healthy, f"GPU {i} unhealthy on a supposedly good machine: {h.problems}"
        assert h.memory_used_mib is not None
    # no XIDs expected on a good machine; the watcher must not have crashed
    assert all(e.index in indices or e.index == -1 for e in probe.drain_events())
    if probe._thread is not None:
        assert probe._thread.is_alive()


def test_memory_holder_seen_then_released(probe):
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed in this environment")
    baseline = probe.used_memory_mib(0)
    already = set(probe.memory_holders(0))   # someone else's processes on this GPU do not count
    env = dict(os.environ, CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES="0")
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import torch,time,sys; x=torch.empty(1<<28, device='cuda'); print('ready',flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        def held():
            if child.poll() is not None:
                raise AssertionError(f"allocator exited {child.returncode}: {child.stderr.read()[-2000:]}")
            return child.pid in probe.memory_holders(0)
        try:
            poll(held, timeout=180, what=f"pid {child.pid} among GPU 0 memory holders")
        except AssertionError:
            raise AssertionError(f"holders on GPU 0: {probe.memory_holders(0)} (child pid {child.pid}; "
                                 "a container without the host PID namespace reports other PIDs)")
        holders = probe.memory_holders(0)
        assert holders[child.pid] >= 1024, holders   # 1<<28 float32 = 1 GiB (+ CUDA context)
        assert probe.used_memory_mib(0) >= baseline + 1024
        h = probe.check([0], {child.pid})[0]
        assert child.pid not in h.foreign_pids
        assert child.pid in probe.check([0], set())[0].foreign_pids

        child.stdin.close()   # the child exits and frees its memory
        result = wait_for_memory_release(probe, [0], tolerance_mib=256, timeout_s=60, ignore_pids=already)
        assert result.ok, f"memory not released: {result}"
        assert child.pid not in probe.memory_holders(0)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(30)
