"""``FakeGpuProbe``: scripted GPUs for tests, judged by the same rule as NVML's readings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Union

from supervisor.probes.gpu_health import (
    THROTTLE_HW_POWER_BRAKE,
    THROTTLE_HW_SLOWDOWN,
    THROTTLE_HW_THERMAL,
    THROTTLE_SW_THERMAL,
    XID_QUARANTINE_S,
    DeviceReading,
    GpuEvent,
)
from supervisor.probes.gpu_probe import ProbeBase

#: Names accepted by ``FakeGpuProbe.set_throttle``.
THROTTLE_NAMES: dict[str, int] = {
    "hw_slowdown": THROTTLE_HW_SLOWDOWN,
    "sw_thermal": THROTTLE_SW_THERMAL,
    "thermal": THROTTLE_HW_THERMAL,
    "hw_thermal": THROTTLE_HW_THERMAL,
    "power_brake": THROTTLE_HW_POWER_BRAKE,
}


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


class FakeGpuProbe(ProbeBase):
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
