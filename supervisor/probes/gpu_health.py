"""The GPU health rule: is a GPU fit to (re)launch training on, and is a job's memory released?

Pure: no NVML, no threads, no clock of its own. The NVML adapter
(``supervisor/probes/nvml.py``) and the test fake (``supervisor/probes/gpu_fake.py``)
produce ``DeviceReading``s; the decisions below are the same for both, so the fake
tests exercise the real rule.

* ``DeviceReading`` -- the raw facts about one device at one moment (reachable?
  ECC count, pending page retirement, row remapping, temperature, clock event
  reasons, memory, compute processes). ``None`` in a field means "this device
  or driver does not support the query", never "zero".
* ``evaluate(reading, xids, now)`` -- turns a reading plus the critical XIDs
  seen on that device into a ``GpuHealth``.
* ``memory_held(readings, ignore_pids)`` and ``released(held, tolerance_mib)``
  -- the one definition of "the previous attempt's GPU memory is released",
  used by the daemon's release gate and by ``wait_for_memory_release``.

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
A *critical* XID holds its device unhealthy for ``xid_quarantine_s`` (default
300 s) after its latest occurrence (``xid_held``), or until it is acknowledged
(``clear_xid`` on the probe: an operator's "this GPU was reset, use it"). When
the hold ends the device is judged on its current reading alone: after XID 79
(fallen off the bus) NVML keeps answering ``GPU is lost``, so the device stays
unhealthy until NVML can query it again *and* the quarantine has passed -- a
reset within the 300 s still waits out the hold unless acknowledged.
Non-critical XIDs (13, 31, 43, ... which are usually the application's own
fault) are reported as events but never affect health.

Indices are NVML indices (PCI bus order). Children should run with
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so CUDA numbers the devices the same way.
PIDs are those NVML reports (host PID namespace).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping, Optional

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


def xid_description(xid: int) -> str:
    """A few words for an event line; unknown XIDs point at NVIDIA's catalog."""
    return CRITICAL_XIDS.get(xid) or OTHER_XIDS.get(xid) or "see NVIDIA XID catalog"


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
    """Whether a critical XID seen at ``seen_at`` still holds its device unhealthy at ``now``."""
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


# --------------------------------------------------------------------------- memory released


@dataclass(frozen=True)
class HeldMemory:
    """GPU memory that compute processes (other than the ignored ones) hold on a set of GPUs."""

    holders: Mapping[int, Mapping[int, int]]                      # GPU -> {pid: MiB}; {} when none
    unreadable: Mapping[int, str] = field(default_factory=dict)   # GPU -> why it could not be read

    @property
    def mib(self) -> int:
        return sum(mib for procs in self.holders.values() for mib in procs.values())

    def describe(self) -> str:
        """``GPU 0: pid 4242 (1500 MiB); GPU 1: lost (NVML: GPU is lost)``, for events and errors."""
        parts = [f"GPU {i}: " + ", ".join(f"pid {p} ({m} MiB)" for p, m in sorted(procs.items()))
                 for i, procs in sorted(self.holders.items()) if procs]
        parts += [f"GPU {i}: {why}" for i, why in sorted(self.unreadable.items())]
        return "; ".join(parts)


def memory_held(readings: Iterable[DeviceReading], ignore_pids: Collection[int] = ()) -> HeldMemory:
    """What counts as held: the memory of the compute processes NVML lists on the GPUs, except
    ``ignore_pids`` (the processes of other supervised jobs sharing a GPU). Not the device's used
    memory, which also counts the driver's reservation. An unreachable GPU is unreadable."""
    ignore = set(ignore_pids)
    holders: dict[int, dict[int, int]] = {}
    unreadable: dict[int, str] = {}
    for reading in readings:
        if reading.unreachable:
            unreadable[reading.index] = reading.unreachable
            holders[reading.index] = {}
        else:
            holders[reading.index] = {pid: mib for pid, mib in reading.processes.items() if pid not in ignore}
    return HeldMemory(holders, unreadable)


def released(held: HeldMemory, tolerance_mib: int) -> bool:
    """Released: every GPU could be read, and at most ``tolerance_mib`` is held on all of them together."""
    return not held.unreadable and held.mib <= tolerance_mib
