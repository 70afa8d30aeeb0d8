"""Which due jobs start now, and GPU health holds: the daemon's side of placement.

A part of ``Daemon`` (a mixin: it uses the daemon's store, config, health and launch). The rule
itself is the pure ``supervisor.placement.place``; the facts it needs come from
``supervisor.daemon.gpus``. Every attempt end and every housekeeping tick runs
``start_due_jobs``, so a freed GPU is given to the next waiting job at once.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Optional

from supervisor.daemon import gpus as gpu_facts
from supervisor.jobs.spec import JobSpec, SpecError
from supervisor.jobs.machine import On
from supervisor.jobs.states import JobState
from supervisor.placement import Holder, Placement, Request, place
from supervisor.policy import held_until_start
from supervisor.process import launcher
from supervisor.store import JobRecord

if TYPE_CHECKING:
    from supervisor.daemon.running import Running

S = JobState

# Jobs a placement round reads: those that may start and those that hold GPUs.
CANDIDATE_STATES = (S.QUEUED.value, S.BACKOFF.value, S.STARTING.value, S.RUNNING.value, S.STOPPING.value)
# With NVML, GPU health and foreign memory change without a write: an unchanged round is redone
# after this long. Without it, only after IDLE_ROUND_S (nothing else can change the answer).
PLACEMENT_RECHECK_S = 5.0
IDLE_ROUND_S = 60.0


class GpuScheduling:
    """Placement of due jobs onto free GPUs, and holds while a job's GPUs are unhealthy."""

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
                spec = self.spec_of(job)
            except SpecError:
                self._guarded(self.launch, job.name)  # fails it once, with the reason
                continue
            if sick.keys() & set(gpu_facts.job_gpus(job, spec)):
                self._guarded(self.launch, job.name)  # pinned to an unhealthy GPU: holds it, naming the problem
                continue
            requests.append(gpu_facts.request_for(job, spec))
        if not self.executor.places_gpus:  # executor: slurm: Slurm allocates and places the GPUs
            requests = [dataclasses.replace(r, pinned=(), count=0) for r in requests]
        if not requests:
            return Placement()
        placement = place(requests, self.gpu_inventory(), self.gpus_held(jobs, requests, sick), self._slots_left())
        for name, gpus in placement.starts:
            self._placed[name] = gpus
            self._guarded(self.launch, name)
            self._placed.pop(name, None)
            if name not in self.running:  # e.g. the release gate waits for its GPU memory: look again next tick
                self._round_again = True
        self._note_waiting({j.name: j for j in jobs}, placement.waits)
        return placement

    def _placement_candidates(self) -> list[JobRecord]:
        """The jobs a round looks at: those that may start, and those holding GPUs (a round is
        linear in them, never in the finished and stopped ones)."""
        jobs = self.store.list_jobs(CANDIDATE_STATES)
        listed = {j.name for j in jobs}
        for name in (self.running.keys() | self.ending.keys()) - listed:  # live, in whatever state
            job = self.store.get_job(name)
            if job is not None:
                jobs.append(job)
        return jobs

    def _round_inputs(self) -> tuple:
        """What a placement round depends on, besides the clock (``_round_valid_until``)."""
        return (self.store.generation, frozenset(self.running), frozenset(self.ending), id(self.config),
                frozenset(self.retry_at.items()))

    def _round_unchanged(self) -> bool:
        last = getattr(self, "_last_round", None)
        return last is not None and last == self._round_inputs() and time.monotonic() < self._round_valid_until

    def _note_round(self) -> None:
        """Remember the inputs once the round's own writes are done, and until when its answer holds:
        the next backoff that ends, the next failed step's retry, and (with NVML, whose readings
        change by themselves) ``PLACEMENT_RECHECK_S``."""
        now_wall, now = time.time(), time.monotonic()
        until = [now + PLACEMENT_RECHECK_S] if self.health.probe is not None else [now + IDLE_ROUND_S]
        until += [at for at in self.retry_at.values() if at > now]
        for job in self.store.list_jobs([S.BACKOFF.value]):
            if job.next_start_at is not None:
                until.append(now + max(0.0, job.next_start_at - now_wall))
        self._round_valid_until = now if self._round_again else min(until)
        self._last_round = self._round_inputs()

    def _is_due(self, job: JobRecord) -> bool:
        if job.name in self.running or job.name in self.ending or job.name in self.launching \
                or self.retry_at.get(job.name, 0) > time.monotonic():
            return False
        return job.state == S.QUEUED.value or (job.state == S.BACKOFF.value and (job.next_start_at or 0) <= time.time())

    def gpu_inventory(self) -> list[int]:
        return gpu_facts.inventory(self.config.gpus, self.health.probe)

    def gpus_held(self, jobs: list[JobRecord], requests=(), sick: Optional[dict[int, str]] = None) -> dict:
        """GPU -> Holder for every GPU that is not free: our jobs' sets, then (when a probe is
        there and some request wants GPUs) ill health (``sick``, when already read) and memory
        held by processes."""
        held = gpu_facts.held_by_jobs(self._with_specs(jobs), self.running.keys() | self.ending.keys())
        for name, gpus in self.launching.items():  # placed, and its worker is starting it
            for gpu in gpus:
                held.setdefault(gpu, Holder(name, f"job {name}"))
        probe = self.health.probe
        if probe is None or not any(r.needs_gpus for r in requests):
            return held
        for gpu, why in (self._unhealthy_gpus() if sick is None else sick).items():
            held.setdefault(gpu, Holder(None, f"unhealthy: {why}"))
        others = [g for g in self.gpu_inventory() if g not in held]
        held.update(gpu_facts.held_by_processes(probe, others, self.daemon_id, self.config.foreign_memory_mib))
        return held

    def _unhealthy_gpus(self) -> dict[int, str]:
        """GPU -> its problems, over the inventory; empty without NVML."""
        probe = self.health.probe
        return gpu_facts.unhealthy(probe, self.gpu_inventory()) if probe is not None else {}

    def _slots_left(self) -> Optional[int]:
        if not self.config.max_running:
            return None
        return max(0, self.config.max_running - len(self.running) - len(self.launching))

    def _note_waiting(self, jobs: dict[str, JobRecord], waits: dict[str, str]) -> None:
        """A due job that cannot start yet says why (``status``). No event: the reason changes as
        others come and go. One commit for all the changed ones (200 queued jobs, one freed GPU)."""
        changed = {name: why for name, why in waits.items() if jobs[name].state_reason != why}
        if not changed:
            return
        with self.store.transaction():
            for name, why in changed.items():
                self.store.update_job(name, state_reason=why)

    def _devices_unhealthy(self, name: str, spec: JobSpec, run: "Running") -> bool:
        reasons = self.health.unhealthy_reasons(gpu_facts.job_gpus(self.store.get_job(name), spec))
        if reasons:
            run.extra["hold_reason"] = "; ".join(reasons)
            self.event(name, "gpu", run.extra["hold_reason"])
        return bool(reasons)

    def _devices_ready(self, name: str, gpus: tuple[int, ...], spec: JobSpec, actor: Optional[str]) -> bool:
        """Hold the job on unhealthy devices; wait until the last attempt's GPU memory is released."""
        reasons = self.health.unhealthy_reasons(gpus)
        if reasons:
            self.event(name, "gpu", "; ".join(reasons))
            self.transition(name, On.DEVICES_UNHEALTHY, "devices unhealthy: " + "; ".join(reasons), actor)
            return False
        if not gpus or self.health.probe is None:
            return True  # nothing to wait for: skip the scans of every other job's processes below
        others = {r.child.pid for n, r in self.running.items() if n != name}
        marked = launcher.marked_processes({n: self.run_uid(n) for n in self.running if n != name}, self.daemon_id)
        others |= {p.pid for p in marked}
        gate = self.health.release_gate(name, gpus, spec.health, others)
        if gate.note:
            self.event(name, "gpu", gate.note)
        return gate.ready

    def release_healthy_holds(self) -> None:
        """A job held for its devices leaves ``held`` by itself once they are healthy again; with
        ``on_gpu_failure: move`` it moves to another free set once ``gpu_failure_wait`` has passed."""
        for job, spec in self._with_specs(self.store.list_jobs([S.HELD.value])):
            if job.name in self.preflight_holds:
                continue
            if held_until_start(spec, job.state_reason, job.preempt_streak):  # no device problem to clear
                continue
            reasons = self.health.unhealthy_reasons(gpu_facts.job_gpus(job, spec))
            if not reasons:
                self.event(job.name, "gpu", "devices healthy again")
                self.transition(job.name, On.DEVICES_HEALTHY, "devices healthy again")
            elif spec.on_gpu_failure == "move" and self._held_for(job) >= spec.gpu_failure_wait_s:
                self._move_off_failed_gpus(job, spec, reasons)

    def _held_for(self, job: JobRecord) -> float:
        """Seconds since the job entered ``held`` (its last state change; kept across daemon restarts)."""
        since = self.store.last_event_at(job.name, "state")
        return time.time() - since if since is not None else 0.0

    def _move_off_failed_gpus(self, job: JobRecord, spec: JobSpec, reasons: list[str]) -> None:
        """Resume on another free set of the same size. Never another size: the number of GPUs fixes
        the per-GPU batch and the data order (the DDP trap), so a move keeps the count."""
        old = gpu_facts.job_gpus(job, spec)
        request = Request(job=job.name, count=len(old))
        held = self.gpus_held(self.store.list_jobs(), [request])
        for gpu in old:
            held.setdefault(gpu, Holder(None, "the failed set"))
        placed = place([request], self.gpu_inventory(), held)
        if not placed.starts:
            why = f"{'; '.join(reasons)}; no free set of {len(old)} GPU(s) to move to yet"
            if job.state_reason != why:
                self.store.update_job(job.name, state_reason=why)
            return
        new = ",".join(str(g) for g in placed.starts[0][1])
        what = f"moved from GPU {job.devices or spec.device} to GPU {new}: unhealthy for more than " \
               f"{spec.gpu_failure_wait_s:g}s ({'; '.join(reasons)})"
        with self.store.transaction():
            self.store.update_job(job.name, devices=new)
            self.event(job.name, "gpu", what, old=job.devices or spec.device, new=new)
            self.transition(job.name, On.MOVED_OFF_FAILED_GPUS, what)
        self.start_due_jobs()

    def route_gpu_events(self) -> None:
        """Record XID events in the history of every job using that device."""
        events = self.health.drain_events()
        if not events:
            return
        for job, spec in self.valid_specs():
            if S(job.state).is_final:
                continue
            devices = set(gpu_facts.job_gpus(job, spec))
            for ev in events:
                if ev.index in devices or ev.index == -1:
                    self.event(job.name, "gpu", f"GPU {ev.index}: XID {ev.xid} ({ev.description})",
                               xid=ev.xid, critical=ev.critical)
