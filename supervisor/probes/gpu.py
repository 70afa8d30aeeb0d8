"""The GPU probe: is each GPU a job runs on fit to (re)launch training on?

Daemon-side only: this module talks to the driver through NVML
(``nvidia-ml-py``, module ``pynvml``) and never imports torch or ultralytics.

Layers
------
* ``DeviceReading`` -- the raw facts about one device at one moment (reachable?
  ECC count, pending page retirement, row remapping, temperature, clock event
  reasons, memory, compute processes). ``None`` in a field means "this device
  or driver does not support the query", never "zero".
* ``evaluate(reading, xids, now)`` -- the one pure rule that turns a reading
  plus the critical XIDs seen on that device into a ``GpuHealth``. The real
  ``NvmlProbe`` and the test ``FakeGpuProbe`` both go through it, so the fake
  tests exercise the real decisions.
* ``GpuProbe`` -- the interface the daemon uses; ``NvmlProbe`` reads NVML,
  ``FakeGpuProbe`` replays scripted readings.

Unhealthy (``problems``; do not launch there):
  the device is lost/unreachable (NVML ``GPU is lost`` / ``Unknown`` on the
  handle or any query), a critical XID (``CRITICAL_XIDS``) is held, volatile
  uncorrectable ECC errors > 0, page retirement pending, row remapping pending
  or failed.
Warnings only (``warnings``; still healthy): temperature at or above the
slowdown threshold, clocks held down by HW slowdown / thermal / power brake.
Other processes on the device (``foreign_pids``) are reported, not judged.

XID quarantine
--------------
XID events arrive asynchronously (an NVML event-set thread in the real probe,
``inject_xid`` in the fake) and are remembered per device with the time of the
latest occurrence. A *critical* XID holds its device unhealthy for
``xid_quarantine_s`` (default 300 s) after its latest occurrence, or until it
is acknowledged with ``clear_xid(index)`` (an operator's "this GPU was reset,
use it"). When the hold ends the device is judged on its current reading
alone: after XID 79 (fallen off the bus) NVML keeps answering ``GPU is lost``,
so the device stays unhealthy until NVML can query it again *and* the
quarantine has passed -- a reset within the 300 s still waits out the hold
unless acknowledged. Non-critical XIDs (13, 31, 43, ... which are usually the
application's own fault) are reported by ``drain_events`` but never affect
health.

Indices are NVML indices (PCI bus order). Children should run with
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so CUDA numbers the devices the same way.
PIDs are those NVML reports (host PID namespace).
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Mapping, Optional, Protocol, Union, runtime_checkable

# --------------------------------------------------------------------------- facts

#: XIDs that mean the device (or its memory/links) cannot be trusted until reset.
CRITICAL_XIDS: dict[int, str] = {
    48: "double-bit ECC error",
    63: "ECC page retirement or row remapping event",
    64: "ECC page retirement or row remapping failure",
    74: "NVLink error",
    79: "fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}

#: Descriptions for XIDs that are reported but not held against the device.
OTHER_XIDS: dict[int, str] = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "preemptive cleanup",
}

XID_QUARANTINE_S = 300.0

# Clock event ("throttle") reason bits, as in nvml.h (nvmlClocksEventReason*).
# Only those that point at hardware trouble are warnings; SW power cap, idle,
# application clocks and sync boost are normal operation.
THROTTLE_HW_SLOWDOWN = 0x08
THROTTLE_SW_THERMAL = 0x20
THROTTLE_HW_THERMAL = 0x40
THROTTLE_HW_POWER_BRAKE = 0x80

THROTTLE_WARNINGS: dict[int, str] = {
    THROTTLE_HW_SLOWDOWN: "HW slowdown",
    THROTTLE_SW_THERMAL: "SW thermal slowdown",
    THROTTLE_HW_THERMAL: "HW thermal slowdown",
    THROTTLE_HW_POWER_BRAKE: "HW power brake slowdown",
}

#: Names accepted by ``FakeGpuProbe.set_throttle``.
THROTTLE_NAMES: dict[str, int] = {
    "hw_slowdown": THROTTLE_HW_SLOWDOWN,
    "sw_thermal": THROTTLE_SW_THERMAL,
    "thermal": THROTTLE_HW_THERMAL,
    "hw_thermal": THROTTLE_HW_THERMAL,
    "power_brake": THROTTLE_HW_POWER_BRAKE,
}

_MIB = 1024 * 1024


def xid_description(xid: int) -> str:
    return CRITICAL_XIDS.get(xid) or OTHER_XIDS.get(xid) or "see NVIDIA XID catalog"


class GpuUnavailable(Exception):
    """NVML cannot be used on this host (no driver, no library, no GPU)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class GpuQueryError(RuntimeError):
    """A reading the caller asked for could not be taken (device lost, query failed)."""


@dataclass(frozen=True)
class DeviceReading:
    """Raw facts about one device. ``None``: not supported / not readable."""

    index: int
    # Why the device cannot be reached, e.g. "lost (NVML: GPU is lost)"; None: reachable.
    unreachable: Optional[str] = None
    ecc_uncorrected: Optional[int] = None      # volatile uncorrectable ECC errors
    retired_pages_pending: Optional[bool] = None
    remap_pending: Optional[bool] = None
    remap_failed: Optional[bool] = None
    temperature_c: Optional[int] = None
    slowdown_c: Optional[int] = None           # NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
    clock_event_reasons: Optional[int] = None  # bitmask of nvmlClocksEventReason*
    memory_used_mib: Optional[int] = None
    memory_total_mib: Optional[int] = None
    processes: Mapping[int, int] = field(default_factory=dict)  # pid -> MiB (0: unknown)
    utilization_pct: Optional[int] = None      # GPU busy share over NVML's last sample period


@dataclass(frozen=True)
class GpuHealth:
    index: int
    healthy: bool
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    memory_used_mib: Optional[int] = None
    foreign_pids: tuple[int, ...] = ()
    foreign_memory_mib: tuple[int, ...] = ()   # aligned with foreign_pids

    @property
    def foreign(self) -> dict[int, int]:
        return dict(zip(self.foreign_pids, self.foreign_memory_mib))


@dataclass(frozen=True)
class GpuEvent:
    """One XID reported by the driver. ``index`` is -1 when the device could not be told."""

    index: int
    xid: int
    at: float          # probe clock (monotonic) when the probe received it
    critical: bool
    description: str

    def __str__(self) -> str:
        kind = "critical " if self.critical else ""
        return f"GPU {self.index}: {kind}XID {self.xid} ({self.description})"


def xid_held(seen_at: float, now: float, quarantine_s: float) -> bool:
    return now - seen_at < quarantine_s


def evaluate(reading: DeviceReading, xids: Mapping[int, float], now: float,
             job_pids: Collection[int] = (), quarantine_s: float = XID_QUARANTINE_S) -> GpuHealth:
    """The health rule. ``xids``: critical XID -> time of its latest occurrence."""
    i = reading.index
    problems: list[str] = []
    warnings: list[str] = []
    if reading.unreachable:
        problems.append(f"GPU {i}: {reading.unreachable}")
    for xid, seen_at in sorted(xids.items()):
        if xid in CRITICAL_XIDS and xid_held(seen_at, now, quarantine_s):
            problems.append(f"GPU {i}: XID {xid} ({CRITICAL_XIDS[xid]})")
    if reading.ecc_uncorrected:
        n = reading.ecc_uncorrected
        problems.append(f"GPU {i}: {n} uncorrectable ECC error{'s' if n != 1 else ''} (volatile)")
    if reading.retired_pages_pending:
        problems.append(f"GPU {i}: page retirement pending")
    if reading.remap_pending or reading.remap_failed:
        what = "/".join(w for w, on in (("pending", reading.remap_pending), ("failed", reading.remap_failed)) if on)
        problems.append(f"GPU {i}: row remapping {what}")
    if (reading.temperature_c is not None and reading.slowdown_c is not None
            and reading.slowdown_c > 0 and reading.temperature_c >= reading.slowdown_c):
        warnings.append(f"GPU {i}: temperature {reading.temperature_c} C >= slowdown threshold {reading.slowdown_c} C")
    if reading.clock_event_reasons:
        names = [name for bit, name in THROTTLE_WARNINGS.items() if reading.clock_event_reasons & bit]
        if names:
            warnings.append(f"GPU {i}: clocks throttled ({', '.join(names)})")
    jobs = set(job_pids)
    foreign = sorted((pid, mib) for pid, mib in reading.processes.items() if pid not in jobs)
    return GpuHealth(
        index=i, healthy=not problems, problems=tuple(problems), warnings=tuple(warnings),
        memory_used_mib=reading.memory_used_mib,
        foreign_pids=tuple(p for p, _ in foreign), foreign_memory_mib=tuple(m for _, m in foreign))


# --------------------------------------------------------------------------- interface


@runtime_checkable
class GpuProbe(Protocol):
    def available(self) -> bool: ...

    def check(self, indices: list[int], job_pids: set[int]) -> dict[int, GpuHealth]: ...

    def memory_holders(self, index: int) -> dict[int, int]: ...

    def used_memory_mib(self, index: int) -> int: ...

    def drain_events(self) -> list[GpuEvent]: ...

    def clear_xid(self, index: int) -> None: ...

    def close(self) -> None: ...


class _ProbeBase:
    """XID bookkeeping and the check loop, shared by the real and the fake probe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, xid_quarantine_s: float = XID_QUARANTINE_S):
        self._clock = clock
        self.xid_quarantine_s = float(xid_quarantine_s)
        self._lock = threading.Lock()
        self._xids: dict[int, dict[int, float]] = {}   # index -> critical xid -> latest time
        self._events: list[GpuEvent] = []

    # subclasses
    def read(self, index: int) -> DeviceReading:
        raise NotImplementedError

    def _record_xid(self, index: int, xid: int) -> GpuEvent:
        now = self._clock()
        critical = xid in CRITICAL_XIDS
        event = GpuEvent(index=index, xid=xid, at=now, critical=critical, description=xid_description(xid))
        with self._lock:
            self._events.append(event)
            if critical:
                self._xids.setdefault(index, {})[xid] = now
        return event

    def held_xids(self, index: int) -> dict[int, float]:
        """Critical XIDs still holding ``index`` unhealthy (xid -> latest time); expired ones are forgotten."""
        now = self._clock()
        with self._lock:
            seen = self._xids.get(index, {})
            for xid in [x for x, t in seen.items() if not xid_held(t, now, self.xid_quarantine_s)]:
                del seen[xid]
            return dict(seen)

    def clear_xid(self, index: int) -> None:
        """Acknowledge every critical XID on ``index`` (e.g. after an operator reset the GPU)."""
        with self._lock:
            self._xids.pop(index, None)

    def drain_events(self) -> list[GpuEvent]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def check(self, indices: Iterable[int], job_pids: Collection[int] = ()) -> dict[int, GpuHealth]:
        out: dict[int, GpuHealth] = {}
        for index in indices:
            reading = self.read(index)
            out[index] = evaluate(reading, self.held_xids(index), self._clock(), job_pids, self.xid_quarantine_s)
        return out

    def memory_holders(self, index: int) -> dict[int, int]:
        return dict(self.read(index).processes)

    def used_memory_mib(self, index: int) -> int:
        reading = self.read(index)
        if reading.memory_used_mib is None:
            raise GpuQueryError(f"GPU {index}: memory not readable ({reading.unreachable or 'not supported'})")
        return reading.memory_used_mib


# --------------------------------------------------------------------------- NVML


class _Lost(Exception):
    def __init__(self, detail: str):
        self.detail = detail


class NvmlProbe(_ProbeBase):
    """GPU health from NVML; critical XIDs arrive on a daemon thread via an NVML event set.

    Create with ``NvmlProbe.open()``. Every NVML query is wrapped: an
    unsupported or failing query leaves its reading field ``None`` and never
    raises out of the probe; ``GPU is lost`` on any query marks the device lost.
    """

    EVENT_WAIT_MS = 500

    def __init__(self, nvml, clock: Callable[[], float] = time.monotonic,
                 xid_quarantine_s: float = XID_QUARANTINE_S):
        super().__init__(clock, xid_quarantine_s)
        self._nvml = nvml
        self._closed = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._event_set = None
        self._handle_index: dict[int, int] = {}
        self.device_count = 0
        #: Devices whose XID events could not be registered, index -> reason.
        self.xid_unsupported: dict[int, str] = {}
        #: Last error the event thread met (other than a timeout), for diagnostics.
        self.event_error: Optional[str] = None

    @classmethod
    def open(cls, clock: Callable[[], float] = time.monotonic, xid_quarantine_s: float = XID_QUARANTINE_S,
             watch_xids: bool = True) -> "NvmlProbe":
        """Initialise NVML, or raise ``GpuUnavailable`` with a one-line reason."""
        try:
            import pynvml as nvml
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise GpuUnavailable(f"nvidia-ml-py is not installed ({e})") from None
        try:
            nvml.nvmlInit()
        except nvml.NVMLError_LibraryNotFound:
            raise GpuUnavailable("NVML library libnvidia-ml.so.1 not found (no NVIDIA driver on this host)") from None
        except nvml.NVMLError_DriverNotLoaded:
            raise GpuUnavailable("NVIDIA driver is not loaded") from None
        except nvml.NVMLError_NoPermission:
            raise GpuUnavailable("no permission to use NVML") from None
        except nvml.NVMLError as e:
            raise GpuUnavailable(f"NVML failed to initialise: {e}") from None
        except OSError as e:
            raise GpuUnavailable(f"NVML failed to load: {e}") from None
        probe = cls(nvml, clock, xid_quarantine_s)
        try:
            probe.device_count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as e:
            probe._shutdown()
            raise GpuUnavailable(f"NVML cannot count devices: {e}") from None
        if probe.device_count == 0:
            probe._shutdown()
            raise GpuUnavailable("NVML found no GPU")
        if watch_xids:
            probe._start_xid_watch()
        return probe

    # ---------------------------------------------------------------- plumbing

    def available(self) -> bool:
        return not self._closed

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass

    def close(self) -> None:
        """Stop the XID thread and release NVML. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        thread_done = True
        if self._thread is not None:
            self._thread.join(timeout=max(2.0, 4 * self.EVENT_WAIT_MS / 1000))
            thread_done = not self._thread.is_alive()
        if not thread_done:
            # A wait stuck inside the driver: leak the event set and NVML rather than free under it.
            return
        if self._event_set is not None:
            try:
                self._nvml.nvmlEventSetFree(self._event_set)
            except Exception:
                pass
            self._event_set = None
        self._shutdown()

    def __enter__(self) -> "NvmlProbe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _addr(handle) -> Optional[int]:
        try:
            return ctypes.cast(handle, ctypes.c_void_p).value
        except Exception:
            return None

    def _handle(self, index: int):
        """Handle for ``index``; raises ``_Lost`` when the device cannot be reached."""
        nv = self._nvml
        if self._closed:
            raise _Lost("unreachable (probe closed)")
        try:
            return nv.nvmlDeviceGetHandleByIndex(index)
        except (nv.NVMLError_GpuIsLost, nv.NVMLError_Unknown) as e:
            raise _Lost(f"lost (NVML: {e})") from None
        except (nv.NVMLError_InvalidArgument, nv.NVMLError_NotFound) as e:
            raise _Lost(f"not found (NVML: {e})") from None
        except nv.NVMLError as e:
            raise _Lost(f"unreachable (NVML: {e})") from None

    def _q(self, fn: str, *args, fallback: Optional[str] = None):
        """One NVML query; ``None`` when unsupported or failing, ``_Lost`` when the GPU is lost."""
        nv = self._nvml
        func = getattr(nv, fn, None)
        if func is None:
            return self._q(fallback, *args) if fallback else None
        try:
            return func(*args)
        except nv.NVMLError_GpuIsLost as e:
            raise _Lost(f"lost (NVML: {e})") from None
        except (nv.NVMLError_FunctionNotFound, nv.NVMLLibraryMismatchError):
            return self._q(fallback, *args) if fallback else None
        except (nv.NVMLError, OSError, ValueError, TypeError):
            return None

    # ---------------------------------------------------------------- readings

    def read(self, index: int) -> DeviceReading:
        nv = self._nvml
        try:
            h = self._handle(index)
            ecc = self._q("nvmlDeviceGetTotalEccErrors", h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                          nv.NVML_VOLATILE_ECC)
            pending = self._q("nvmlDeviceGetRetiredPagesPendingStatus", h)
            remap = self._q("nvmlDeviceGetRemappedRows", h)
            temp = self._q("nvmlDeviceGetTemperature", h, nv.NVML_TEMPERATURE_GPU)
            slowdown = self._q("nvmlDeviceGetTemperatureThreshold", h, nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)
            reasons = self._q("nvmlDeviceGetCurrentClocksEventReasons", h,
                              fallback="nvmlDeviceGetCurrentClocksThrottleReasons")
            used, total = self._memory(h)
            procs = self._processes(h)
            rates = self._q("nvmlDeviceGetUtilizationRates", h)
        except _Lost as lost:
            return DeviceReading(index=index, unreachable=lost.detail)
        remap_pending = remap_failed = None
        if remap is not None:
            _corr, _unc, is_pending, failure = remap
            remap_pending, remap_failed = bool(is_pending), bool(failure)
        return DeviceReading(
            index=index,
            ecc_uncorrected=None if ecc is None else int(ecc),
            retired_pages_pending=None if pending is None else pending == nv.NVML_FEATURE_ENABLED,
            remap_pending=remap_pending, remap_failed=remap_failed,
            temperature_c=None if temp is None else int(temp),
            slowdown_c=None if slowdown is None else int(slowdown),
            clock_event_reasons=None if reasons is None else int(reasons),
            memory_used_mib=used, memory_total_mib=total, processes=procs or {},
            utilization_pct=None if rates is None else int(rates.gpu))

    def _memory(self, h) -> tuple[Optional[int], Optional[int]]:
        nv = self._nvml
        # v2 reports "used" without the driver-reserved part, so an idle GPU reads ~0.
        v2 = getattr(nv, "nvmlMemory_v2", None)
        info = self._q("nvmlDeviceGetMemoryInfo", h, v2) if v2 is not None else None
        if info is None:
            info = self._q("nvmlDeviceGetMemoryInfo", h)
        if info is None:
            return None, None
        return int(info.used) // _MIB, int(info.total) // _MIB

    def _processes(self, h) -> Optional[dict[int, int]]:
        procs = self._q("nvmlDeviceGetComputeRunningProcesses", h,
                        fallback="nvmlDeviceGetComputeRunningProcesses_v2")
        if procs is None:
            return None
        out: dict[int, int] = {}
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            mib = int(used) // _MIB if isinstance(used, int) and used >= 0 else 0
            out[int(p.pid)] = out.get(int(p.pid), 0) + mib   # one pid may show per MIG instance
        return out

    def memory_holders(self, index: int) -> dict[int, int]:
        try:
            return self._processes(self._handle(index)) or {}
        except _Lost:
            return {}

    def used_memory_mib(self, index: int) -> int:
        try:
            used, _ = self._memory(self._handle(index))
        except _Lost as lost:
            raise GpuQueryError(f"GPU {index}: {lost.detail}") from None
        if used is None:
            raise GpuQueryError(f"GPU {index}: memory info not supported")
        return used

    # ---------------------------------------------------------------- XID events

    def _start_xid_watch(self) -> None:
        nv = self._nvml
        try:
            self._event_set = nv.nvmlEventSetCreate()
        except nv.NVMLError as e:
            for i in range(self.device_count):
                self.xid_unsupported[i] = f"event set: {e}"
            return
        registered = 0
        for i in range(self.device_count):
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                addr = self._addr(h)
                if addr is not None:
                    self._handle_index[addr] = i
                nv.nvmlDeviceRegisterEvents(h, nv.nvmlEventTypeXidCriticalError, self._event_set)
                registered += 1
            except nv.NVMLError as e:   # NotSupported on some boards/vGPU; lost devices
                self.xid_unsupported[i] = str(e)
        if not registered:
            try:
                nv.nvmlEventSetFree(self._event_set)
            except nv.NVMLError:
                pass
            self._event_set = None
            return
        self._thread = threading.Thread(target=self._watch_xids, name="nvml-xid", daemon=True)
        self._thread.start()

    def _event_index(self, device) -> int:
        addr = self._addr(device)
        if addr in self._handle_index:
            return self._handle_index[addr]
        try:
            return int(self._nvml.nvmlDeviceGetIndex(device))
        except Exception:
            return -1

    def _watch_xids(self) -> None:
        nv = self._nvml
        while not self._stop.is_set():
            try:
                data = nv.nvmlEventSetWait(self._event_set, self.EVENT_WAIT_MS)
            except nv.NVMLError_Timeout:
                continue
            except Exception as e:   # e.g. GPU lost mid-wait: note it, back off, keep watching
                self.event_error = str(e)
                self._stop.wait(1.0)
                continue
            if int(data.eventType) & nv.nvmlEventTypeXidCriticalError:
                self._record_xid(self._event_index(data.device), int(data.eventData))


# --------------------------------------------------------------------------- fake


@dataclass
class _FakeDevice:
    lost: bool = False
    ecc: Optional[int] = 0
    retired_pending: Optional[bool] = False
    remap_pending: Optional[bool] = None
    remap_failed: Optional[bool] = None
    temperature: Optional[int] = 40
    slowdown: Optional[int] = 90
    throttle: int = 0
    base_used_mib: int = 0
    total_mib: int = 81920
    holders: dict[int, int] = field(default_factory=dict)
    utilization: Optional[int] = 0


class FakeGpuProbe(_ProbeBase):
    """Scripted GPUs for tests. Same ``evaluate`` rule and XID quarantine as ``NvmlProbe``.

    Pass ``clock`` (e.g. a ``lambda: now[0]``) to move quarantine time without sleeping.
    Used memory = ``set_base_memory`` + the sum of ``set_memory_holders``.
    """

    def __init__(self, device_count: int = 1, clock: Callable[[], float] = time.monotonic,
                 xid_quarantine_s: float = XID_QUARANTINE_S):
        super().__init__(clock, xid_quarantine_s)
        self.devices = [_FakeDevice() for _ in range(device_count)]
        self.closed = False
        self.reads = 0

    def available(self) -> bool:
        return not self.closed

    @property
    def device_count(self) -> int:
        return len(self.devices)

    def close(self) -> None:
        self.closed = True

    def _dev(self, i: int) -> _FakeDevice:
        return self.devices[i]

    # scripting
    def set_lost(self, i: int, lost: bool = True) -> None:
        self._dev(i).lost = lost

    def inject_xid(self, i: int, xid: int) -> GpuEvent:
        return self._record_xid(i, xid)

    def set_ecc(self, i: int, n: Optional[int]) -> None:
        self._dev(i).ecc = n

    def set_retired_pending(self, i: int, pending: Optional[bool]) -> None:
        self._dev(i).retired_pending = pending

    def set_remap(self, i: int, pending: bool = False, failed: bool = False) -> None:
        d = self._dev(i)
        d.remap_pending, d.remap_failed = pending, failed

    def set_temperature(self, i: int, t: Optional[int], slowdown: Optional[int] = 90) -> None:
        d = self._dev(i)
        d.temperature, d.slowdown = t, slowdown

    def set_throttle(self, i: int, reasons: Union[int, Iterable[str]]) -> None:
        if isinstance(reasons, int):
            mask = reasons
        else:
            mask = 0
            for name in reasons:
                mask |= THROTTLE_NAMES[name]
        self._dev(i).throttle = mask

    def set_memory_holders(self, i: int, holders: Mapping[int, int]) -> None:
        self._dev(i).holders = dict(holders)

    def set_utilization(self, i: int, pct: Optional[int]) -> None:
        self._dev(i).utilization = pct

    def set_base_memory(self, i: int, mib: int) -> None:
        self._dev(i).base_used_mib = mib

    # reading
    def read(self, index: int) -> DeviceReading:
        self.reads += 1
        if self.closed:
            return DeviceReading(index=index, unreachable="unreachable (probe closed)")
        if not 0 <= index < len(self.devices):
            return DeviceReading(index=index, unreachable="not found (NVML: Invalid Argument)")
        d = self.devices[index]
        if d.lost:
            return DeviceReading(index=index, unreachable="lost (NVML: GPU is lost)")
        return DeviceReading(
            index=index, ecc_uncorrected=d.ecc, retired_pages_pending=d.retired_pending,
            remap_pending=d.remap_pending, remap_failed=d.remap_failed,
            temperature_c=d.temperature, slowdown_c=d.slowdown, clock_event_reasons=d.throttle,
            memory_used_mib=d.base_used_mib + sum(d.holders.values()), memory_total_mib=d.total_mib,
            processes=dict(d.holders), utilization_pct=d.utilization)


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class ReleaseResult:
    ok: bool
    waited_s: float
    holders: dict[int, dict[int, int]]            # on timeout: index -> {pid: MiB} still holding memory
    used_mib: dict[int, Optional[int]] = field(default_factory=dict)  # last reading; None: unreadable


def wait_for_memory_release(probe: GpuProbe, indices: Iterable[int], tolerance_mib: int, timeout_s: float,
                            clock: Callable[[], float] = time.monotonic,
                            sleep: Callable[[float], None] = time.sleep,
                            interval_s: float = 0.5) -> ReleaseResult:
    """Wait until every device's used memory is <= ``tolerance_mib`` (the previous attempt's
    processes are really gone), polling every ``interval_s``. An unreadable device counts as
    not released. On timeout, ``holders`` names the compute processes still on each device.
    """
    indices = list(indices)
    start = clock()
    while True:
        used: dict[int, Optional[int]] = {}
        for i in indices:
            try:
                used[i] = probe.used_memory_mib(i)
            except GpuQueryError:
                used[i] = None
        waited = clock() - start
        pending = [i for i in indices if used[i] is None or used[i] > tolerance_mib]
        if not pending:
            return ReleaseResult(ok=True, waited_s=waited, holders={}, used_mib=used)
        if waited >= timeout_s:
            holders = {i: probe.memory_holders(i) for i in pending}
            return ReleaseResult(ok=False, waited_s=waited, holders=holders, used_mib=used)
        sleep(min(interval_s, timeout_s - waited))


def open_probe(log: Callable[[str], object], **kwargs) -> Optional[GpuProbe]:
    """The daemon's entry point: an ``NvmlProbe``, or ``None`` after logging one line."""
    try:
        return NvmlProbe.open(**kwargs)
    except GpuUnavailable as e:
        log(f"GPU checks off: {e.reason}")
        return None
