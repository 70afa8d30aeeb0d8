"""The NVML adapter: ``DeviceReading``s and XID events from the driver.

Daemon-side only: talks to the driver through NVML (``nvidia-ml-py``, module
``pynvml``) and never imports torch or ultralytics. What the readings mean is
decided in ``supervisor/probes/gpu_health.py``.
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Callable, Optional

from supervisor.probes.gpu_health import XID_QUARANTINE_S, DeviceReading
from supervisor.probes.gpu_probe import GpuProbe, GpuQueryError, GpuUnavailable, ProbeBase

_MIB = 1024 * 1024


class _Lost(Exception):
    def __init__(self, detail: str):
        self.detail = detail


class NvmlProbe(ProbeBase):
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


def open_probe(log: Callable[[str], object], **kwargs) -> Optional[GpuProbe]:
    """The daemon's entry point: an ``NvmlProbe``, or ``None`` after logging one line."""
    try:
        return NvmlProbe.open(**kwargs)
    except GpuUnavailable as e:
        log(f"GPU checks off: {e.reason}")
        return None
