"""The facts placement needs: which GPUs the daemon may use and who holds each one now.

A GPU is held by one of our jobs (its recorded set while the job has a process or is between
attempts in ``backoff``), by processes that are not our jobs' and hold more memory than
``foreign_memory_mib``, or it is unhealthy. Processes are told apart by the job marker in
their environment (supervisor/process/launcher.py), the same way strays are found.
"""

from __future__ import annotations

from typing import Iterable, Optional

import psutil

from supervisor.jobs.spec import JobSpec
from supervisor.jobs.states import JobState
from supervisor.placement import Holder, Request
from supervisor.process.launcher import DAEMON_ENV, JOB_ENV
from supervisor.store import JobRecord

# States in which a job keeps its GPUs: it has a process, or it is coming straight back to them.
HOLDING_STATES = {JobState.STARTING.value, JobState.RUNNING.value, JobState.STOPPING.value,
                  JobState.BACKOFF.value}


def inventory(configured: Optional[list[int]], probe) -> list[int]:
    """config.yaml's ``gpus`` when set (it also declares GPUs where NVML is absent), else every GPU NVML sees."""
    if configured is not None:
        return sorted(configured)
    count = getattr(probe, "device_count", 0) if probe is not None else 0
    return list(range(int(count or 0)))


def job_gpus(job: JobRecord, spec: JobSpec) -> tuple[int, ...]:
    """The GPUs the job trains on: the set recorded at its first launch, else the ones its spec names."""
    if job.devices:
        return tuple(int(d) for d in job.devices.split(","))
    return tuple(spec.gpu_indices)


def request_for(job: JobRecord, spec: JobSpec) -> Request:
    pinned = job_gpus(job, spec)
    return Request(job=job.name, priority=spec.priority, submitted=job.created_at, pinned=pinned,
                   count=0 if pinned else (spec.gpus or 0))


def held_by_jobs(jobs: Iterable[tuple[JobRecord, JobSpec]], live: Iterable[str]) -> dict[int, Holder]:
    """GPUs our jobs hold: those with a process (``live`` also lists attempts ending now) or in backoff."""
    live = set(live)
    held: dict[int, Holder] = {}
    for job, spec in jobs:
        if job.state in HOLDING_STATES or job.name in live:
            for gpu in job_gpus(job, spec):
                held[gpu] = Holder(job.name, f"job {job.name}")
    return held


def held_by_processes(probe, gpus: Iterable[int], daemon_id: str, foreign_limit_mib: int) -> dict[int, Holder]:
    """GPUs whose memory is held by processes: a job of ours that is not meant to be there (its
    memory not released yet), or foreign processes above the limit. Our job's own leftovers are
    attributed to it, so its next attempt is not kept from its own GPUs (the release gate waits)."""
    held: dict[int, Holder] = {}
    for gpu in gpus:
        foreign: dict[int, int] = {}
        for pid, mib in probe.memory_holders(gpu).items():
            job = _job_of(pid, daemon_id)
            if job is None:
                foreign[pid] = mib
            elif gpu not in held:
                held[gpu] = Holder(job, f"job {job}: its memory is not released yet")
        if gpu not in held and sum(foreign.values()) > foreign_limit_mib:
            pids = ", ".join(str(p) for p in sorted(foreign)[:5]) + (", ..." if len(foreign) > 5 else "")
            held[gpu] = Holder(None, f"pids {pids} ({sum(foreign.values())} MiB), not our jobs")
    return held


def unhealthy(probe, gpus: Iterable[int]) -> dict[int, str]:
    """GPU -> its problems, for the GPUs that cannot be used now."""
    report = probe.check(list(gpus), set())
    return {i: "; ".join(h.problems) for i, h in report.items() if not h.healthy}


def _job_of(pid: int, daemon_id: str) -> Optional[str]:
    """The job of ours a process belongs to (from its environment marker), or None."""
    try:
        env = psutil.Process(pid).environ()
    except (psutil.Error, OSError):
        return None  # gone, or another user's: not readable, so not ours
    if env.get(DAEMON_ENV) != daemon_id:
        return None
    return env.get(JOB_ENV) or None
