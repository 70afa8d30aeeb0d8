"""What a job looks like from outside: the view behind ``status``, ``history`` and the metrics.

Outside ``control/`` because the Prometheus collector shows the same numbers and must not
depend on the socket's handlers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional

from supervisor.contract import read_json
from supervisor.contract import Progress, from_json
from supervisor.jobs.trackers import TrackerRecord
from supervisor.jobs.spec import SpecError
from supervisor.jobs.states import JobState
from supervisor.observe.goodput import goodput
from supervisor.observe.rate import training_rate
from supervisor.store import JobRecord

if TYPE_CHECKING:
    from supervisor.daemon.core import Daemon
    from supervisor.jobs.spec import JobSpec

S = JobState


# Strings in a job's view: whole in its own view (``status NAME``) up to JOB_TEXT characters; in a
# listing of many jobs cut to LISTING_TEXT, with a marker, so that no one job can make a listing fail.
JOB_TEXT = 64 * 1024
LISTING_TEXT = 512


def job_views(daemon: "Daemon", jobs: list[JobRecord], now: Optional[float] = None,
              text_limit: int = LISTING_TEXT) -> list[dict[str, Any]]:
    """``job_view`` of each of ``jobs`` (their attempts read in one query), long strings cut."""
    now = time.time() if now is None else now
    attempts = daemon.store.attempts_by_job([job.name for job in jobs])
    return [cut_long_strings(job_view(daemon, job, now, attempts.get(job.name, [])), text_limit, _SEE_STATUS)
            for job in jobs]


_SEE_STATUS = "`status NAME` shows more"


def cut_long_strings(value: Any, limit: int, hint: str = "") -> Any:
    """``value`` with every string longer than ``limit`` cut, and marked as cut (how long it was)."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"... [cut: {len(value)} characters" \
            f"{'; ' + hint if hint else ''}]"
    if isinstance(value, dict):  # a loop, not a call per value: a listing has 40 values a job
        out = {}
        for k, v in value.items():
            out[k] = cut_long_strings(v, limit, hint) if isinstance(v, (str, dict, list)) else v
        return out
    if isinstance(value, list):
        return [cut_long_strings(v, limit, hint) for v in value]
    return value


def job_view(daemon: "Daemon", job: JobRecord, now: Optional[float] = None,
             attempts: Optional[list] = None) -> dict[str, Any]:
    """What ``status`` shows for one job (also the numbers behind the Prometheus metrics)."""
    now = time.time() if now is None else now
    state = S(job.state)
    try:
        spec = daemon.spec_of(job)  # the row at hand: no second read of it
        epochs, spec_problem, gpus = spec.epochs, None, _gpus_shown(job, spec)
    except SpecError as err:  # shown with its problem; the listing of every other job goes on
        epochs, spec_problem, gpus = None, "; ".join(err.problems), job.devices or "?"
    reported = from_json(Progress, read_json(daemon.home.job_progress(job.name))) if state.has_process else None
    progress = reported or Progress()
    if state is S.COMPLETED:
        epoch = epochs
    elif progress.epoch:
        epoch = progress.epoch  # the epoch being trained now (1-based)
    else:
        epoch = job.epochs_done
    attempts = daemon.store.attempts(job.name) if attempts is None else attempts
    attempt = next((a for a in reversed(attempts) if a.ended_at is None), None) if state.has_process else None
    rate = training_rate(progress, epochs, now) if reported and epochs else None
    return {
        "name": job.name, "state": job.state, "state_reason": job.state_reason, "gpus": gpus,
        "pid": job.pid, "epoch": epoch, "epochs": epochs, "epochs_done": job.epochs_done,
        "batch": progress.batch, "batches": progress.batches,
        "phase": reported.phase if reported else None,
        "batches_per_s": _round(rate.batches_per_s, 3) if rate else None,
        "epoch_s": _round(rate.epoch_s, 1) if rate else None,
        "eta_s": _round(rate.eta_s, 0) if rate else None,
        "attempts": job.attempts, "restarts": max(0, job.attempts - 1), "crash_restarts": job.crash_restarts,
        "last_cause": job.last_cause, "run_dir": job.run_dir,
        "uptime_s": round(now - attempt.started_at, 1) if attempt else None,
        "next_start_at": job.next_start_at, "owner_uid": job.owner_uid, "created_at": job.created_at,
        "goodput": goodput(job, attempts, now).summary(), "spec_problem": spec_problem,
        "slurm": daemon.executor.view(job.name) if state.has_process else None,  # executor: slurm
        "trackers": TrackerRecord.load(job.trackers).runs(),  # tracker -> {"id", "url"}: the job's one run
    }


def _gpus_shown(job: JobRecord, spec: "JobSpec") -> str:
    """``2,3`` (its set), ``any 2`` (a ``gpus: N`` job not placed yet) or the spec's device (``cpu``)."""
    if job.devices:
        return job.devices
    if spec.gpus:
        return f"any {spec.gpus}"
    return spec.device or "cpu"


def gpu_views(daemon: "Daemon") -> list[dict[str, Any]]:
    """What ``gpus`` shows per GPU of the daemon's inventory: health, memory, utilization, the job
    of ours on it and the processes holding memory (ours and foreign)."""
    probe = daemon.health.probe
    inventory = daemon.gpu_inventory()
    held = daemon.gpus_held(daemon.store.list_jobs())
    report = probe.check(inventory, set()) if probe is not None and inventory else {}
    rows = []
    for gpu in inventory:
        row: dict[str, Any] = {"index": gpu, "job": held[gpu].job if gpu in held else None,
                               "health": "unknown (no NVML)", "problems": [], "memory_used_mib": None,
                               "memory_total_mib": None, "utilization_pct": None, "pids": {}}
        if probe is not None:
            reading = probe.read(gpu)
            health = report.get(gpu)
            row.update(health="healthy" if health is not None and health.healthy else "unhealthy",
                       problems=list(health.problems) if health is not None else [],
                       memory_used_mib=reading.memory_used_mib, memory_total_mib=reading.memory_total_mib,
                       utilization_pct=reading.utilization_pct,
                       pids={str(pid): mib for pid, mib in sorted(reading.processes.items())})
        rows.append(row)
    return rows


def _round(value: Optional[float], digits: int) -> Optional[float]:
    return None if value is None else round(value, digits)
