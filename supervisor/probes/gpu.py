"""The GPU probe, one import away: the public names of the modules it is made of.

* ``gpu_health.py`` -- the pure rule: ``DeviceReading``, ``GpuHealth``, ``GpuEvent``, the XID
  tables, ``evaluate``, ``xid_held`` and the one definition of "memory released"
  (``memory_held``, ``released``).
* ``gpu_probe.py``  -- the ``GpuProbe`` interface, the XID bookkeeping both probes share, the
  errors, and ``wait_for_memory_release``.
* ``nvml.py``       -- ``NvmlProbe`` (NVML through ``pynvml``) and ``open_probe``, the daemon's entry point.
* ``gpu_fake.py``   -- ``FakeGpuProbe``, scripted GPUs for tests.
"""

from supervisor.probes.gpu_fake import THROTTLE_NAMES, FakeGpuProbe
from supervisor.probes.gpu_health import (
    CRITICAL_XIDS,
    OTHER_XIDS,
    THROTTLE_HW_POWER_BRAKE,
    THROTTLE_HW_SLOWDOWN,
    THROTTLE_HW_THERMAL,
    THROTTLE_SW_THERMAL,
    THROTTLE_WARNINGS,
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
from supervisor.probes.gpu_probe import (
    GpuProbe,
    GpuQueryError,
    GpuUnavailable,
    ProbeBase,
    ReleaseResult,
    wait_for_memory_release,
)
from supervisor.probes.nvml import NvmlProbe, open_probe

__all__ = [
    "CRITICAL_XIDS", "OTHER_XIDS", "THROTTLE_HW_POWER_BRAKE", "THROTTLE_HW_SLOWDOWN", "THROTTLE_HW_THERMAL",
    "THROTTLE_NAMES", "THROTTLE_SW_THERMAL", "THROTTLE_WARNINGS", "XID_QUARANTINE_S",
    "DeviceReading", "FakeGpuProbe", "GpuEvent", "GpuHealth", "GpuProbe", "GpuQueryError", "GpuUnavailable",
    "HeldMemory", "NvmlProbe", "ProbeBase", "ReleaseResult",
    "evaluate", "memory_held", "open_probe", "released", "wait_for_memory_release", "xid_description", "xid_held",
]
