"""Which due jobs start now, and GPU health holds: the daemon's side of placement.

Held by ``Daemon`` as ``scheduling``; what it uses of the daemon is ``SchedulingHost``, and it
starts the jobs it places through the launches (supervisor/daemon/launches.py). The rule
itself is the pure ``supervisor.placement.place``; the facts it needs come from
``supervisor.daemon.gpus``. Every attempt end and every housekeeping tick runs
``start_due_jobs``, so a freed GPU is given to the next waiting job at once.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from supervisor.daemon import gpus as gpu_facts
from supervisor.daemon import specs
from supervisor.daemon.running import Running
from supervisor.jobs.spec import JobSpec, SpecError
from supervisor.jobs.machine import On
from supervisor.jobs.states import JobState
from supervisor.placement import Holder, Placement, Request, place
from supervisor.policy import held_until_start
from supervisor.store import JobRecord

if TYPE_CHECKING:
    from supervisor.daemon.config import DaemonConfig
    from supervisor.daemon.health import DeviceHealth
    from supervisor.daemon.launches import Launches
    from supervisor.store import Store

S = JobState

# Jobs a placement round reads: those that may start and those that hold GPUs.
CANDIDATE_STATES = (S.QUEUED.value, S.BACKOFF.value, S.STARTING.value, S.RUNNING.value, S.STOPPING.value)
# With NVML, GPU health and foreign memory change without a write: an unchanged round is redone
# after this long. Without it, only after IDLE_ROUND_S (nothing else can change the answer).
PLACEMENT_RECHECK_S = 5.0
IDLE_ROUND_S = 60.0


class SchedulingHost(Protocol):
    """What placement uses of the daemon: named here so this module needs nothing from core.py."""

    store: "Store"
    config: "DaemonConfig"
    health: "DeviceHealth"
    executor: Any
    daemon_id: str
    running: dict[str, Running]
    ending: dict[str, Running]
    retry_at: dict[str, float]

    def transition(self, name: str, on: On, reason: str, actor: Optional[str] = None, *,
                   grace: float = 0.0, **fields: Any) -> None: ...
    def event(self, name: str, kind: str, reason: str, actor: Optional[str] = None, **data: Any) -> None: ...
    def guarded(self, fn: Callable[[str], None], name: str) -> None: ...


class GpuScheduling:
    """Placement of due jobs onto free GPUs, and holds while a job's GPUs are unhealthy."""

    def __init__(self, host: SchedulingHost, launches: "Launches"):
        self.host = host
        self.launches = launches  # a placed job is started there; those it is starting hold their GPUs
        self._last_round: Optional[tuple] = None  # the inputs of the last round decided
        self._round_valid_until = 0.0
        self._round_again = False

    def start_due_jobs(self) -> Placement:
        """Start every due job that placement lets start (GPUs free, a slot left); the others wait
        with a reason naming what they wait for.

        A round whose inputs did not change since the last one would decide the same again: it is
        skipped (10,000 queued jobs behind one GPU cost a core when every tick placed them all)."""
        if self._round_unchanged():
            return Placement()
        self._last_round, self._round_again = None, False  # a round that fails is done again next time
        placement = self._placement_round()
        self._note_round()
        return placement

    def _placement_round(self) -> Placement:
        jobs = self._placement_candidates()
        due = [j for j in jobs if self._is_due(j)]
        sick = self._unhealthy_gpus() if due else {}  # one NVML pass for every decision below
        requests = []
        for job in due:
            try:
                spec = specs.spec_of(job)
            except SpecError:
                self.host.guarded(self.launches.launch, job.name)  # fails it once, with the reason
                continue
            if sick.keys() & set(gpu_facts.job_gpus(job, spec)):
                # pinned to an unhealthy GPU: holds it, naming the problem
                self.host.guarded(self.launches.launch, job.name)
                continue
            requests.append(gpu_facts.request_for(job, spec))
        if not self.host.executor.places_gpus:  # executor: slurm: Slurm allocates and places the GPUs
            requests = [dataclasses.replace(r, pinned=(), count=0) for r in requests]
        if not requests:
            return Placement()
        placement = place(requests, self.gpu_inventory(), self.gpus_held(jobs, requests, sick), self._slots_left())
        for name, gpus in placement.starts:
            self.host.guarded(functools.partial(self.launches.launch, gpus=gpus), name)
            if name not in self.host.running:  # e.g. the release gate waits for its GPU memory: look again next tick
                self._round_again = True
        self._note_waiting({j.name: j for j in jobs}, placement.waits)
        return placement

    def _placement_candidates(self) -> list[JobRecord]:
        """The jobs a round looks at: those that may start, and those holding GPUs (a round is
        linear in them, never in the finished and stopped ones)."""
        jobs = self.host.store.list_jobs(CANDIDATE_STATES)
        listed = {j.name for j in jobs}
        for name in (self.host.running.keys() | self.host.ending.keys()) - listed:  # live, in whatever state
            job = self.host.store.get_job(name)
            if job is not None:
                jobs.append(job)
        return jobs

    def _round_inputs(self) -> tuple:
        """What a placement round depends on, besides the clock (``_round_valid_until``)."""
        host = self.host
        return (host.store.generation, frozenset(host.running), frozenset(host.ending), id(host.config),
                frozenset(host.retry_at.items()))

    def _round_unchanged(self) -> bool:
        last = self._last_round
        return last is not None and last == self._round_inputs() and time.monotonic() < self._round_valid_until

    def _note_round(self) -> None:
        """Remember the inputs once the round's own writes are done, and until when its answer holds:
        the next backoff that ends, the next failed step's retry, and (with NVML, whose readings
        change by themselves) ``PLACEMENT_RECHECK_S``."""
        now_wall, now = time.time(), time.monotonic()
        until = [now + PLACEMENT_RECHECK_S] if self.host.health.probe is not None else [now + IDLE_ROUND_S]
        until += [at for at in self.host.retry_at.values() if at > now]
        for job in self.host.store.list_jobs([S.BACKOFF.value]):
            if job.next_start_at is not None:
                until.append(now + max(0.0, job.next_start_at - now_wall))
        self._round_valid_until = now if self._round_again else min(until)
        self._last_round = self._round_inputs()

    def _is_due(self, job: JobRecord) -> bool:
        if job.name in self.host.running or job.name in self.host.ending or job.name in self.launches.launching \
                or self.host.retry_at.get(job.name, 0) > time.monotonic():
            return False
        return job.state == S.QUEUED.value or (job.state == S.BACKOFF.value and (job.next_start_at or 0) <= time.time())

    def gpu_inventory(self) -> list[int]:
        return gpu_facts.inventory(self.host.config.gpus, self.host.health.probe)

    def gpus_held(self, jobs: list[JobRecord], requests=(), sick: Optional[dict[int, str]] = None) -> dict:
        """GPU -> Holder for every GPU that is not free: our jobs' sets, then (when a probe is
        there and some request wants GPUs) ill health (``sick``, when already read) and memory
        held by processes."""
        held = gpu_facts.held_by_jobs(specs.with_specs(jobs), self.host.running.keys() | self.host.ending.keys())
        for name, gpus in self.launches.launching.items():  # placed, and its worker is starting it
            for gpu in gpus:
                held.setdefault(gpu, Holder(name, f"job {name}"))
        probe = self.host.health.probe
        if probe is None or not any(r.needs_gpus for r in requests):
            return held
        for gpu, why in (self._unhealthy_gpus() if sick is None else sick).items():
            held.setdefault(gpu, Holder(None, f"unhealthy: {why}"))
        others = [g for g in self.gpu_inventory() if g not in held]
        held.update(gpu_facts.held_by_processes(probe, others, self.host.daemon_id,
                                                self.host.config.foreign_memory_mib))
        return held

    def _unhealthy_gpus(self) -> dict[int, str]:
        """GPU -> its problems, over the inventory; empty without NVML."""
        probe = self.host.health.probe
        return gpu_facts.unhealthy(probe, self.gpu_inventory()) if probe is not None else {}

    def _slots_left(self) -> Optional[int]:
        if not self.host.config.max_running:
            return None
        return max(0, self.host.config.max_running - len(self.host.running) - len(self.launches.launching))

    def _note_waiting(self, jobs: dict[str, JobRecord], waits: dict[str, str]) -> None:
        """A due job that cannot start yet says why (``status``). No event: the reason changes as
        others come and go. One commit for all the changed ones (200 queued jobs, one freed GPU)."""
        changed = {name: why for name, why in waits.items() if jobs[name].state_reason != why}
        if not changed:
            return
        with self.host.store.transaction():
            for name, why in changed.items():
                self.host.store.update_job(name, state_reason=why)

    def release_healthy_holds(self) -> None:
        """A job held for its devices leaves ``held`` by itself once they are healthy again; with
        ``on_gpu_failure: move`` it moves to another free set once ``gpu_failure_wait`` has passed."""
        for job, spec in specs.with_specs(self.host.store.list_jobs([S.HELD.value])):
            if job.name in self.launches.preflight_holds:
                continue
            if held_until_start(spec, job.state_reason, job.preempt_streak):  # no device problem to clear
                continue
            reasons = self.host.health.unhealthy_reasons(gpu_facts.job_gpus(job, spec))
            if not reasons:
                self.host.event(job.name, "gpu", "devices healthy again")
                self.host.transition(job.name, On.DEVICES_HEALTHY, "devices healthy again")
            elif spec.on_gpu_failure == "move" and self._held_for(job) >= spec.gpu_failure_wait_s:
                self._move_off_failed_gpus(job, spec, reasons)

    def _held_for(self, job: JobRecord) -> float:
        """Seconds since the job entered ``held`` (its last state change; kept across daemon restarts)."""
        since = self.host.store.last_event_at(job.name, "state")
        return time.time() - since if since is not None else 0.0

    def _move_off_failed_gpus(self, job: JobRecord, spec: JobSpec, reasons: list[str]) -> None:
        """Resume on another free set of the same size. Never another size: the number of GPUs fixes
        the per-GPU batch and the data order (the DDP trap), so a move keeps the count."""
        old = gpu_facts.job_gpus(job, spec)
        request = Request(job=job.name, count=len(old))
        held = self.gpus_held(self.host.store.list_jobs(), [request])
        for gpu in old:
            held.setdefault(gpu, Holder(None, "the failed set"))
        placed = place([request], self.gpu_inventory(), held)
        if not placed.starts:
            why = f"{'; '.join(reasons)}; no free set of {len(old)} GPU(s) to move to yet"
            if job.state_reason != why:
                self.host.store.update_job(job.name, state_reason=why)
            return
        new = ",".join(str(g) for g in placed.starts[0][1])
        what = f"moved from GPU {job.devices or spec.device} to GPU {new}: unhealthy for more than " \
               f"{spec.gpu_failure_wait_s:g}s ({'; '.join(reasons)})"
        with self.host.store.transaction():
            self.host.store.update_job(job.name, devices=new)
            self.host.event(job.name, "gpu", what, old=job.devices or spec.device, new=new)
            self.host.transition(job.name, On.MOVED_OFF_FAILED_GPUS, what)
        self.start_due_jobs()

    def route_gpu_events(self) -> None:
        """Record XID events in the history of every job using that device."""
        events = self.host.health.drain_events()
        if not events:
            return
        for job, spec in specs.with_specs(self.host.store.list_jobs()):
            if S(job.state).is_final:
                continue
            devices = set(gpu_facts.job_gpus(job, spec))
            for ev in events:
                if ev.index in devices or ev.index == -1:
                    self.host.event(job.name, "gpu", f"GPU {ev.index}: XID {ev.xid} ({ev.description})",
                               xid=ev.xid, critical=ev.critical)
