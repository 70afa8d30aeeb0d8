"""The GPU probe interface the daemon uses, and what the NVML probe and the fake share.

``GpuProbe`` is the interface; ``ProbeBase`` holds the XID bookkeeping (events
arrive asynchronously and are remembered per device with the time of their
latest occurrence) and the check loop that feeds readings to the health rule
(``supervisor/probes/gpu_health.py``). ``NvmlProbe`` (``nvml.py``) reads NVML;
``FakeGpuProbe`` (``gpu_fake.py``) replays scripted readings.
``wait_for_memory_release`` polls a probe with the rule's ``memory_held``/``released``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Protocol, runtime_checkable

from supervisor.probes.gpu_health import (
    CRITICAL_XIDS,
    XID_QUARANTINE_S,
    DeviceReading,
    GpuEvent,
    GpuHealth,
    HeldMemory,
    evaluate,
    memory_held,
    released,
    xid_description,
    xid_held,
)


class GpuUnavailable(Exception):
    """NVML cannot be used on this host (no driver, no library, no GPU)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class GpuQueryError(RuntimeError):
    """A reading the caller asked for could not be taken (device lost, query failed)."""


@runtime_checkable
class GpuProbe(Protocol):
    """What the daemon asks of a GPU probe; ``NvmlProbe`` and ``FakeGpuProbe`` both answer it."""

    def available(self) -> bool: ...

    def read(self, index: int) -> DeviceReading: ...

    def check(self, indices: list[int], job_pids: set[int]) -> dict[int, GpuHealth]: ...

    def memory_holders(self, index: int) -> dict[int, int]: ...

    def used_memory_mib(self, index: int) -> int: ...

    def drain_events(self) -> list[GpuEvent]: ...

    def clear_xid(self, index: int) -> None: ...

    def close(self) -> None: ...


class ProbeBase:
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
        """XIDs received since the last call, for the daemon to turn into events."""
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


@dataclass(frozen=True)
class ReleaseResult:
    ok: bool
    waited_s: float
    held: HeldMemory   # the last reading: on timeout, who still holds memory (or which GPU was unreadable)


def wait_for_memory_release(probe: GpuProbe, indices: Iterable[int], tolerance_mib: int, timeout_s: float,
                            ignore_pids: Collection[int] = (),
                            clock: Callable[[], float] = time.monotonic,
                            sleep: Callable[[float], None] = time.sleep,
                            interval_s: float = 0.5) -> ReleaseResult:
    """Wait until the GPUs' memory is ``released`` (the previous attempt's processes are really
    gone), polling every ``interval_s``: the daemon's release gate asks the same question once a
    tick. ``ignore_pids``: processes whose memory does not count (other jobs on a shared GPU).
    """
    indices = list(indices)
    start = clock()
    while True:
        held = memory_held((probe.read(i) for i in indices), ignore_pids)
        waited = clock() - start
        if released(held, tolerance_mib):
            return ReleaseResult(ok=True, waited_s=waited, held=held)
        if waited >= timeout_s:
            return ReleaseResult(ok=False, waited_s=waited, held=held)
        sleep(min(interval_s, timeout_s - waited))
