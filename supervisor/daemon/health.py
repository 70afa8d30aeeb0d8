"""GPU health as the daemon uses it: hold jobs on unhealthy devices, wait for memory release.

Wraps a ``GpuProbe`` (real NVML or the fake) with the two questions the job
lifecycle asks. Without a probe (no driver, CPU jobs) every answer is "fine".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

from supervisor.jobs.spec import Health
from supervisor.probes.gpu_health import GpuEvent, memory_held, released
from supervisor.probes.gpu_probe import GpuProbe


@dataclass(frozen=True)
class ReleaseGate:
    ready: bool          # launch now
    note: str = ""       # something worth an event (released after a wait, or gave up waiting)


class DeviceHealth:
    def __init__(self, probe: Optional[GpuProbe], clock=time.monotonic):
        self.probe = probe
        self.clock = clock
        self._waiting_since: dict[str, float] = {}

    def unhealthy_reasons(self, gpus: Sequence[int]) -> list[str]:
        """Why the job's GPUs cannot be used now; empty when they can (or cannot be checked)."""
        if self.probe is None or not gpus:
            return []
        report = self.probe.check(list(gpus), set())
        return [p for h in report.values() if not h.healthy for p in h.problems]

    def release_gate(self, name: str, gpus: Sequence[int], health: Health, other_jobs_pids: set[int]) -> ReleaseGate:
        """Whether the previous attempt's GPU memory is gone (as NVIDIA's ft_launcher waits for it).

        "Gone" is the probe rule's ``released`` (``memory_held`` over the job's GPUs, not counting
        the processes of other supervised jobs, within ``gpu_release_tolerance_mib``).
        After ``gpu_release_timeout`` the launch goes ahead and the note names the
        pids still holding memory.
        """
        if self.probe is None or not gpus:
            return ReleaseGate(True)
        held = memory_held((self.probe.read(i) for i in gpus), other_jobs_pids)
        started = self._waiting_since.setdefault(name, self.clock())
        waited = self.clock() - started
        if released(held, health.gpu_release_tolerance_mib):
            self._waiting_since.pop(name, None)
            return ReleaseGate(True, f"GPU memory released after {waited:.1f}s" if waited >= 1 else "")
        if waited < health.gpu_release_timeout:
            return ReleaseGate(False)
        self._waiting_since.pop(name, None)
        return ReleaseGate(True, f"GPU memory still held after {waited:.0f}s by {held.describe()}; launching anyway")

    def forget(self, name: str) -> None:
        """The job stopped waiting (stopped, removed, ended): its next launch waits afresh."""
        self._waiting_since.pop(name, None)

    def drain_events(self) -> list[GpuEvent]:
        return self.probe.drain_events() if self.probe is not None else []
