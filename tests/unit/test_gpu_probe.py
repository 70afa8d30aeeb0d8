"""GPU health rules through FakeGpuProbe (the same ``evaluate`` the NVML probe uses), the one
definition of "memory released" (the daemon's release gate and ``wait_for_memory_release`` agree),
NvmlProbe's query handling against a stub NVML module, and the no-driver path."""

from __future__ import annotations

import threading
import time
import types

import pytest

from supervisor.daemon.health import DeviceHealth
from supervisor.jobs.spec import Health
from supervisor.probes import gpu as gpu_mod
from supervisor.probes.gpu import (
    CRITICAL_XIDS,
    DeviceReading,
    FakeGpuProbe,
    GpuHealth,
    GpuProbe,
    GpuUnavailable,
    NvmlProbe,
    memory_held,
    open_probe,
    released,
    wait_for_memory_release,
)


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        assert s > 0, "must poll, not spin"
        self.t += s


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def probe(clock):
    return FakeGpuProbe(2, clock=clock, xid_quarantine_s=300)


def health(probe, i=0, job_pids=()) -> GpuHealth:
    return probe.check([i], set(job_pids))[i]


def assert_healthy(h: GpuHealth):
    assert h.healthy, h.problems
    assert h.problems == ()


def test_fake_satisfies_protocol(probe):
    assert isinstance(probe, GpuProbe)
    assert probe.available()
    probe.close()
    assert not probe.available()


def test_clean_devices_are_healthy(probe):
    result = probe.check([0, 1], set())
    assert set(result) == {0, 1}
    for i, h in result.items():
        assert h.index == i
        assert_healthy(h)
        assert h.warnings == ()
        assert h.foreign_pids == ()


# ---------------------------------------------------------------- lost

def test_lost_then_found(probe):
    probe.set_lost(0, True)
    h = health(probe)
    assert not h.healthy
    assert h.problems == ("GPU 0: lost (NVML: GPU is lost)",)
    assert h.memory_used_mib is None
    assert_healthy(health(probe, 1))  # the other device is unaffected
    probe.set_lost(0, False)
    assert_healthy(health(probe))


def test_unknown_index_is_unhealthy(probe):
    h = health(probe, 7)
    assert not h.healthy
    assert "GPU 7: not found" in h.problems[0]


# ---------------------------------------------------------------- XIDs

@pytest.mark.parametrize("xid", [48, 63, 64, 74, 79, 92, 94, 95])
def test_critical_xid_unhealthy_until_quarantine_expires(probe, clock, xid):
    assert xid in CRITICAL_XIDS
    event = probe.inject_xid(0, xid)
    assert event.critical and event.index == 0 and event.xid == xid
    h = health(probe)
    assert not h.healthy
    assert h.problems == (f"GPU 0: XID {xid} ({CRITICAL_XIDS[xid]})",)
    assert_healthy(health(probe, 1))
    clock.t += 299
    assert not health(probe).healthy
    clock.t += 1
    assert_healthy(health(probe))


def test_xid79_wording(probe):
    probe.inject_xid(0, 79)
    assert health(probe).problems == ("GPU 0: XID 79 (fallen off the bus)",)


def test_repeated_xid_restarts_quarantine(probe, clock):
    probe.inject_xid(0, 48)
    clock.t += 200
    probe.inject_xid(0, 48)
    clock.t += 200
    assert not health(probe).healthy  # 200 s after the latest occurrence
    clock.t += 100
    assert_healthy(health(probe))


def test_clear_xid_acknowledges(probe):
    probe.inject_xid(0, 95)
    probe.inject_xid(0, 74)
    assert len(health(probe).problems) == 2
    probe.clear_xid(0)
    assert_healthy(health(probe))


def test_xid79_with_lost_device_waits_for_both(probe, clock):
    """XID 79 then NVML says lost: healthy only once the device answers AND the hold passed."""
    probe.inject_xid(0, 79)
    probe.set_lost(0, True)
    assert len(health(probe).problems) == 2
    clock.t += 60
    probe.set_lost(0, False)  # reset after a minute: XID hold remains
    assert health(probe).problems == ("GPU 0: XID 79 (fallen off the bus)",)
    clock.t += 240
    assert_healthy(health(probe))

    probe.inject_xid(0, 79)
    probe.set_lost(0, True)
    clock.t += 1000  # hold expired but still off the bus
    assert health(probe).problems == ("GPU 0: lost (NVML: GPU is lost)",)
    probe.set_lost(0, False)
    assert_healthy(health(probe))


@pytest.mark.parametrize("xid", [13, 31, 43])
def test_non_critical_xid_ignored_but_reported(probe, xid):
    event = probe.inject_xid(0, xid)
    assert not event.critical
    assert_healthy(health(probe))
    events = probe.drain_events()
    assert [(e.index, e.xid, e.critical) for e in events] == [(0, xid, False)]


def test_drain_events_returns_each_once(probe, clock):
    probe.inject_xid(0, 79)
    clock.t += 1
    probe.inject_xid(1, 13)
    events = probe.drain_events()
    assert [(e.index, e.xid, e.critical, e.at) for e in events] == [(0, 79, True, 1000.0), (1, 13, False, 1001.0)]
    assert str(events[0]) == "GPU 0: critical XID 79 (fallen off the bus)"
    assert probe.drain_events() == []
    # draining does not acknowledge: the device stays held
    assert not health(probe).healthy


# ---------------------------------------------------------------- ECC / retirement / remapping

def test_ecc_uncorrectable_then_counter_reset(probe):
    probe.set_ecc(0, 2)
    h = health(probe)
    assert not h.healthy
    assert h.problems == ("GPU 0: 2 uncorrectable ECC errors (volatile)",)
    probe.set_ecc(0, 1)
    assert health(probe).problems == ("GPU 0: 1 uncorrectable ECC error (volatile)",)
    probe.set_ecc(0, 0)  # volatile counter is reset by a GPU reset / driver reload
    assert_healthy(health(probe))
    probe.set_ecc(0, None)  # ECC not supported: skipped
    assert_healthy(health(probe))


def test_retired_pages_pending_then_done(probe):
    probe.set_retired_pending(0, True)
    h = health(probe)
    assert h.problems == ("GPU 0: page retirement pending",)
    probe.set_retired_pending(0, False)
    assert_healthy(health(probe))
    probe.set_retired_pending(0, None)
    assert_healthy(health(probe))


def test_remap_pending_then_done(probe):
    probe.set_remap(0, pending=True)
    assert health(probe).problems == ("GPU 0: row remapping pending",)
    probe.set_remap(0)
    assert_healthy(health(probe))


def test_remap_failure_then_replaced(probe):
    probe.set_remap(0, failed=True)
    assert health(probe).problems == ("GPU 0: row remapping failed",)
    probe.set_remap(0, pending=True, failed=True)
    assert health(probe).problems == ("GPU 0: row remapping pending/failed",)
    probe.set_remap(0, pending=False, failed=False)
    assert_healthy(health(probe))


def test_several_problems_all_listed(probe):
    probe.set_ecc(1, 3)
    probe.set_remap(1, pending=True)
    probe.inject_xid(1, 94)
    h = health(probe, 1)
    assert not h.healthy
    assert len(h.problems) == 3
    assert all(p.startswith("GPU 1: ") for p in h.problems)


# ---------------------------------------------------------------- warnings only

def test_temperature_warning_stays_healthy(probe):
    probe.set_temperature(0, 89, slowdown=90)
    assert health(probe).warnings == ()
    probe.set_temperature(0, 91, slowdown=90)
    h = health(probe)
    assert h.healthy
    assert h.warnings == ("GPU 0: temperature 91 C >= slowdown threshold 90 C",)
    probe.set_temperature(0, 60, slowdown=90)
    assert health(probe).warnings == ()
    probe.set_temperature(0, 95, slowdown=None)  # threshold unsupported: no judgement
    assert health(probe).warnings == ()


@pytest.mark.parametrize("reasons,text", [
    (["hw_slowdown"], "HW slowdown"),
    (["thermal"], "HW thermal slowdown"),
    (["sw_thermal"], "SW thermal slowdown"),
    (["power_brake"], "HW power brake slowdown"),
    (["hw_slowdown", "power_brake"], "HW slowdown, HW power brake slowdown"),
])
def test_throttle_warning_stays_healthy(probe, reasons, text):
    probe.set_throttle(0, reasons)
    h = health(probe)
    assert h.healthy
    assert h.warnings == (f"GPU 0: clocks throttled ({text})",)
    probe.set_throttle(0, [])
    assert health(probe).warnings == ()


def test_benign_clock_reasons_are_not_warnings(probe):
    probe.set_throttle(0, 0x01 | 0x04 | 0x10)  # idle, SW power cap, sync boost
    h = health(probe)
    assert h.healthy and h.warnings == ()


def test_throttle_bits_match_nvml():
    pynvml = pytest.importorskip("pynvml")
    assert gpu_mod.THROTTLE_HW_SLOWDOWN == pynvml.nvmlClocksEventReasonHwSlowdown
    assert gpu_mod.THROTTLE_SW_THERMAL == pynvml.nvmlClocksEventReasonSwThermalSlowdown
    assert gpu_mod.THROTTLE_HW_THERMAL == pynvml.nvmlClocksEventReasonHwThermalSlowdown
    assert gpu_mod.THROTTLE_HW_POWER_BRAKE == pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown


# ---------------------------------------------------------------- memory holders

def test_foreign_memory_holders_reported(probe):
    probe.set_base_memory(0, 5)
    probe.set_memory_holders(0, {100: 4000, 101: 1000, 555: 2048})
    h = health(probe, 0, job_pids={100, 101})
    assert h.healthy  # foreign processes are reported, not judged
    assert h.foreign_pids == (555,)
    assert h.foreign_memory_mib == (2048,)
    assert h.foreign == {555: 2048}
    assert h.memory_used_mib == 5 + 4000 + 1000 + 2048
    assert probe.memory_holders(0) == {100: 4000, 101: 1000, 555: 2048}
    assert probe.used_memory_mib(0) == 7053
    assert health(probe, 0).foreign_pids == (100, 101, 555)
    probe.set_memory_holders(0, {})
    assert health(probe, 0).foreign_pids == ()


def test_used_memory_of_lost_device_raises(probe):
    probe.set_lost(0)
    with pytest.raises(gpu_mod.GpuQueryError, match="GPU 0"):
        probe.used_memory_mib(0)


# ---------------------------------------------------------------- wait_for_memory_release

def test_wait_for_memory_release_succeeds(probe, clock):
    probe.set_memory_holders(0, {42: 3000})
    probe.set_memory_holders(1, {43: 3000})
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        clock.sleep(s)
        if len(sleeps) == 3:
            probe.set_memory_holders(0, {})
        if len(sleeps) == 5:
            probe.set_memory_holders(1, {})

    r = wait_for_memory_release(probe, [0, 1], tolerance_mib=256, timeout_s=30, clock=clock, sleep=sleep)
    assert r.ok
    assert r.held.mib == 0 and r.held.holders == {0: {}, 1: {}}
    assert r.waited_s == pytest.approx(2.5)
    assert len(sleeps) == 5 and all(s == 0.5 for s in sleeps)


def test_wait_for_memory_release_immediate(probe, clock):
    probe.set_base_memory(0, 100)   # the driver's own reservation is not a holder
    r = wait_for_memory_release(probe, [0], tolerance_mib=0, timeout_s=30, clock=clock,
                                sleep=lambda s: pytest.fail("no need to sleep"))
    assert r.ok and r.waited_s == 0


def test_wait_for_memory_release_times_out_with_holders(probe, clock):
    probe.set_memory_holders(0, {4242: 1500, 4243: 200})
    r = wait_for_memory_release(probe, [0, 1], tolerance_mib=256, timeout_s=10, clock=clock, sleep=clock.sleep)
    assert not r.ok
    assert r.waited_s == pytest.approx(10)
    assert r.held.holders == {0: {4242: 1500, 4243: 200}, 1: {}}
    assert r.held.mib == 1700
    assert r.held.describe() == "GPU 0: pid 4242 (1500 MiB), pid 4243 (200 MiB)"


def test_wait_for_memory_release_ignores_other_jobs_pids(probe, clock):
    probe.set_memory_holders(0, {4242: 1500, 77: 10})
    r = wait_for_memory_release(probe, [0], tolerance_mib=256, timeout_s=10, ignore_pids={4242},
                                clock=clock, sleep=lambda s: pytest.fail("no need to sleep"))
    assert r.ok and r.held.holders == {0: {77: 10}}


def test_wait_for_memory_release_lost_device_times_out(probe, clock):
    probe.set_lost(1)
    r = wait_for_memory_release(probe, [0, 1], tolerance_mib=256, timeout_s=3, clock=clock, sleep=clock.sleep)
    assert not r.ok
    assert r.held.mib == 0
    assert r.held.unreadable == {1: "lost (NVML: GPU is lost)"}
    assert r.held.describe() == "GPU 1: lost (NVML: GPU is lost)"


# ---------------------------------------------------------------- one definition of "memory released"

def test_memory_held_is_pure_over_readings():
    readings = [DeviceReading(0, processes={1: 100, 2: 200, 3: 50}), DeviceReading(1, processes={2: 900}),
                DeviceReading(2, unreachable="lost (NVML: GPU is lost)")]
    held = memory_held(readings, ignore_pids={2})
    assert held.holders == {0: {1: 100, 3: 50}, 1: {}, 2: {}}
    assert held.mib == 150
    assert held.unreadable == {2: "lost (NVML: GPU is lost)"}
    assert not released(held, tolerance_mib=10_000)   # an unreadable GPU is never "released"
    held = memory_held(readings[:2], ignore_pids={2})
    assert released(held, 150) and not released(held, 149)   # tolerance is for all the GPUs together


# (holders per GPU, GPUs asked, pids of other jobs, lost GPUs, tolerance) -> released?
RELEASE_CASES = [
    ({}, [0], set(), set(), 256, True),
    ({0: {10: 300}}, [0], set(), set(), 256, False),
    ({0: {10: 256}}, [0], set(), set(), 256, True),
    ({0: {10: 200}, 1: {11: 200}}, [0, 1], set(), set(), 256, False),   # summed over the job's GPUs
    ({0: {10: 200}, 1: {11: 200}}, [0], set(), set(), 256, True),       # GPU 1 is not the job's
    ({0: {10: 5000}}, [0], {10}, set(), 0, True),                        # another job's process
    ({0: {10: 5000, 11: 1}}, [0], {10}, set(), 0, False),
    ({}, [0, 1], set(), {1}, 256, False),                                # lost: cannot tell
]


@pytest.mark.parametrize("holders,gpus,others,lost,tolerance,expected", RELEASE_CASES)
def test_release_gate_and_wait_for_memory_release_agree(holders, gpus, others, lost, tolerance, expected, clock):
    probe = FakeGpuProbe(2, clock=clock)
    for i, procs in holders.items():
        probe.set_memory_holders(i, procs)
    for i in lost:
        probe.set_lost(i)
    gate = DeviceHealth(probe, clock=clock).release_gate(
        "job", gpus, Health(gpu_release_tolerance_mib=tolerance, gpu_release_timeout=60), others)
    waited = wait_for_memory_release(probe, gpus, tolerance_mib=tolerance, timeout_s=0, ignore_pids=others,
                                     clock=clock, sleep=lambda s: pytest.fail("timeout 0: no sleep"))
    assert gate.ready is expected
    assert waited.ok is expected


def test_release_gate_gives_up_after_its_timeout_naming_the_holders(clock):
    probe = FakeGpuProbe(2, clock=clock)
    probe.set_memory_holders(1, {4242: 1500})
    devices = DeviceHealth(probe, clock=clock)
    health = Health(gpu_release_tolerance_mib=256, gpu_release_timeout=10)
    assert not devices.release_gate("job", [0, 1], health, set()).ready
    clock.t += 10
    gate = devices.release_gate("job", [0, 1], health, set())
    assert gate.ready
    assert gate.note == "GPU memory still held after 10s by GPU 1: pid 4242 (1500 MiB); launching anyway"


# ---------------------------------------------------------------- NvmlProbe against a stub NVML

def _stub_nvml(**overrides):
    """A module-like object with pynvml's real error classes and constants and scripted calls."""
    pynvml = pytest.importorskip("pynvml")
    ns = types.SimpleNamespace()
    for name in dir(pynvml):
        if name.startswith(("NVMLError", "NVML_", "nvmlEventType", "nvmlMemory_v2")) or name == "NVMLLibraryMismatchError":
            setattr(ns, name, getattr(pynvml, name))

    def not_supported(*a):
        raise pynvml.NVMLError_NotSupported()

    mem = types.SimpleNamespace(used=300 * 1024 * 1024, total=80 * 1024 ** 3)
    ns.nvmlInit = lambda: None
    ns.nvmlShutdown = lambda: None
    ns.nvmlDeviceGetCount = lambda: 2
    ns.nvmlDeviceGetHandleByIndex = lambda i: ("h", i)
    ns.nvmlDeviceGetIndex = lambda h: h[1]
    ns.nvmlDeviceGetTotalEccErrors = not_supported
    ns.nvmlDeviceGetRetiredPagesPendingStatus = not_supported
    ns.nvmlDeviceGetRemappedRows = lambda h: (0, 0, 0, 0)
    ns.nvmlDeviceGetTemperature = lambda h, s: 50
    ns.nvmlDeviceGetTemperatureThreshold = lambda h, t: 87
    ns.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0

    def mem_info(h, version=None):
        if version is not None:
            raise pynvml.NVMLError_FunctionNotFound()
        return mem
    ns.nvmlDeviceGetMemoryInfo = mem_info
    ns.nvmlDeviceGetComputeRunningProcesses = lambda h: [
        types.SimpleNamespace(pid=10, usedGpuMemory=1024 * 1024 * 1024),
        types.SimpleNamespace(pid=11, usedGpuMemory=None)]
    ns.nvmlEventSetCreate = lambda: "es"
    ns.nvmlDeviceRegisterEvents = lambda h, t, es: None
    ns.nvmlEventSetFree = lambda es: None

    def wait(es, ms):
        time.sleep(ms / 1000)
        raise pynvml.NVMLError_Timeout()
    ns.nvmlEventSetWait = wait
    for k, v in overrides.items():
        setattr(ns, k, v)
    return ns, pynvml


def _open_stub(monkeypatch, nvml, **kw):
    import sys
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(NvmlProbe, "EVENT_WAIT_MS", 10)
    return NvmlProbe.open(**kw)


def test_nvml_probe_unsupported_queries_are_skipped(monkeypatch):
    nvml, _ = _stub_nvml()
    probe = _open_stub(monkeypatch, nvml)
    try:
        r = probe.read(0)
        assert r.unreachable is None
        assert r.ecc_uncorrected is None and r.retired_pages_pending is None
        assert r.remap_pending is False and r.remap_failed is False
        assert (r.temperature_c, r.slowdown_c) == (50, 87)
        assert r.memory_used_mib == 300  # fell back to v1 memory info
        assert r.processes == {10: 1024, 11: 0}
        h = probe.check([0, 1], {10})
        assert h[0].healthy and h[1].healthy
        assert h[0].foreign_pids == (11,)
        assert probe.used_memory_mib(0) == 300
    finally:
        probe.close()
    assert not probe.available()
    probe.close()  # twice is fine


def test_nvml_probe_problem_readings(monkeypatch):
    nvml, _ = _stub_nvml(
        nvmlDeviceGetTotalEccErrors=lambda h, e, c: 3,
        nvmlDeviceGetRetiredPagesPendingStatus=lambda h: 1,  # NVML_FEATURE_ENABLED
        nvmlDeviceGetRemappedRows=lambda h: (1, 2, 1, 1),
        nvmlDeviceGetTemperature=lambda h, s: 95,
        nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0x08 | 0x04,
    )
    probe = _open_stub(monkeypatch, nvml)
    try:
        h = probe.check([0], set())[0]
        assert h.problems == ("GPU 0: 3 uncorrectable ECC errors (volatile)", "GPU 0: page retirement pending",
                              "GPU 0: row remapping pending/failed")
        assert h.warnings == ("GPU 0: temperature 95 C >= slowdown threshold 87 C",
                              "GPU 0: clocks throttled (HW slowdown)")
    finally:
        probe.close()


def test_nvml_probe_lost_device_and_older_api(monkeypatch):
    _, pynvml = _stub_nvml()
    lost = {1}

    def handle(i):
        if i in lost:
            raise pynvml.NVMLError_GpuIsLost()
        if i > 1:
            raise pynvml.NVMLError_InvalidArgument()
        return ("h", i)

    def events_missing(h):
        raise pynvml.NVMLError_FunctionNotFound()

    nvml, _ = _stub_nvml(nvmlDeviceGetHandleByIndex=handle,
                         nvmlDeviceGetCurrentClocksEventReasons=events_missing,
                         nvmlDeviceGetCurrentClocksThrottleReasons=lambda h: 0x40)
    probe = _open_stub(monkeypatch, nvml)
    try:
        assert probe.xid_unsupported == {1: "GPU is lost"}
        h = probe.check([0, 1, 5], set())
        assert h[0].healthy and h[0].warnings == ("GPU 0: clocks throttled (HW thermal slowdown)",)
        assert h[1].problems == ("GPU 1: lost (NVML: GPU is lost)",)
        assert h[5].problems[0].startswith("GPU 5: not found")
        assert probe.memory_holders(1) == {}
        with pytest.raises(gpu_mod.GpuQueryError):
            probe.used_memory_mib(1)
        lost.clear()
        assert probe.check([1], set())[1].healthy
    finally:
        probe.close()


def test_nvml_probe_lost_mid_query(monkeypatch):
    _, pynvml = _stub_nvml()

    def lost(*a):
        raise pynvml.NVMLError_GpuIsLost()

    nvml, _ = _stub_nvml(nvmlDeviceGetTemperature=lost)
    probe = _open_stub(monkeypatch, nvml, watch_xids=False)
    try:
        assert probe.check([0], set())[0].problems == ("GPU 0: lost (NVML: GPU is lost)",)
    finally:
        probe.close()


def test_nvml_probe_xid_thread(monkeypatch):
    _, pynvml = _stub_nvml()
    queue = [(1, 79), (0, 13)]
    lock = threading.Lock()

    def wait(es, ms):
        with lock:
            if queue:
                i, xid = queue.pop(0)
                return types.SimpleNamespace(device=("h", i), eventType=pynvml.nvmlEventTypeXidCriticalError,
                                             eventData=xid)
        time.sleep(ms / 1000)
        raise pynvml.NVMLError_Timeout()

    def register(h, types_, es):
        if h[1] == 0:
            raise pynvml.NVMLError_NotSupported()

    nvml, _ = _stub_nvml(nvmlEventSetWait=wait, nvmlDeviceRegisterEvents=register)
    clock = Clock()
    probe = _open_stub(monkeypatch, nvml, clock=clock, xid_quarantine_s=300)
    try:
        assert probe.xid_unsupported == {0: "Not Supported"}
        events = []
        deadline = time.monotonic() + 10
        while len(events) < 2 and time.monotonic() < deadline:
            events += probe.drain_events()
            time.sleep(0.01)
        assert [(e.index, e.xid, e.critical) for e in events] == [(1, 79, True), (0, 13, False)]
        h = probe.check([0, 1], set())
        assert h[0].healthy
        assert h[1].problems == ("GPU 1: XID 79 (fallen off the bus)",)
        clock.t += 300
        assert probe.check([1], set())[1].healthy
        thread = probe._thread
        assert thread is not None and thread.is_alive()
    finally:
        probe.close()
    assert not thread.is_alive()


def test_nvml_probe_no_devices(monkeypatch):
    nvml, _ = _stub_nvml(nvmlDeviceGetCount=lambda: 0)
    with pytest.raises(GpuUnavailable, match="no GPU"):
        _open_stub(monkeypatch, nvml)


# ---------------------------------------------------------------- this machine

def _gpu_present() -> bool:
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:
        return False
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


@pytest.mark.skipif(_gpu_present(), reason="an NVIDIA GPU is present; the no-driver path cannot be tested")
def test_no_driver_open_raises_and_open_probe_logs_one_line():
    with pytest.raises(GpuUnavailable) as info:
        NvmlProbe.open()
    reason = info.value.reason
    assert reason and "\n" not in reason
    assert "NVML" in reason or "NVIDIA" in reason

    lines = []
    assert open_probe(lines.append) is None
    assert lines == [f"GPU checks off: {reason}"]
