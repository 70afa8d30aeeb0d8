"""Which waiting jobs start now, and on which GPUs. Pure: the daemon supplies the facts.

The rules (README, "A shared GPU server"):
- A GPU is exclusive. One held by another of our jobs, by foreign processes above the
  threshold, or unhealthy is busy, and the waiting job's reason names it.
- Queue order: ``priority`` (higher first), then submission time.
- A job pinned to a set (``train.device``, or the set recorded at its first launch) waits for
  exactly that set; ``gpus: N`` takes the N lowest-numbered free GPUs.
- No starvation. Walking the queue in order, a job that cannot start *reserves* the free GPUs it
  could use (its pinned ones, or up to N for ``gpus: N``), and jobs behind it may not take them.
  GPUs freed while a four-GPU job waits therefore accumulate for it instead of going, one by
  one, to a stream of one-GPU jobs. The price: a reserved GPU idles until the set is complete
  (no backfilling: the daemon cannot know how long the small job would run).
- A job asking for what the inventory can never give (a GPU it does not list, more GPUs than it
  has) waits with that reason and reserves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional


@dataclass(frozen=True)
class Request:
    job: str
    priority: int = 0
    submitted: float = 0.0
    pinned: tuple[int, ...] = ()   # exactly these GPUs
    count: int = 0                 # any ``count`` GPUs (when not pinned); 0 and not pinned: a CPU job

    @property
    def needs_gpus(self) -> bool:
        return bool(self.pinned) or self.count > 0


@dataclass(frozen=True)
class Holder:
    """Why a GPU is not free: ``job`` of ours holding it (None: foreign processes, ill health)."""

    job: Optional[str]
    why: str             # for the waiting job's reason: "job coco", "pids 77 (3000 MiB), not our jobs"


@dataclass(frozen=True)
class Placement:
    starts: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)  # in queue order
    waits: dict[str, str] = field(default_factory=dict)                     # job -> why it waits


def queue_order(requests: Iterable[Request]) -> list[Request]:
    return sorted(requests, key=lambda r: (-r.priority, r.submitted, r.job))


def place(requests: Iterable[Request], inventory: Iterable[int], busy: Mapping[int, Holder],
          slots: Optional[int] = None) -> Placement:
    """Start what can start. ``busy``: the GPUs held now (one held by a job is not busy for that job:
    it is coming back to its own set). ``slots``: how many more jobs may start (``max_running``)."""
    inventory = sorted(set(inventory))
    taken: dict[int, Holder] = {}    # GPUs given out in this pass
    reserved: dict[int, str] = {}    # GPU -> the waiting job it is kept for
    out = Placement()
    for req in queue_order(requests):
        if slots is not None and len(out.starts) >= slots:
            out.waits[req.job] = "waiting for a free slot (max_running reached)"
            continue
        if not req.needs_gpus:
            out.starts.append((req.job, ()))
            continue
        never = impossible(req, inventory)
        if never:
            out.waits[req.job] = never
            continue
        blocked = {**{g: h for g, h in busy.items() if h.job != req.job}, **taken}
        usable = [g for g in inventory if g not in blocked and g not in reserved]
        chosen = _choose(req, usable)
        if chosen is not None:
            out.starts.append((req.job, chosen))
            taken.update({g: Holder(req.job, f"job {req.job}") for g in chosen})
            continue
        out.waits[req.job] = _why_waiting(req, blocked, reserved)
        for gpu in _would_use(req, usable):
            reserved[gpu] = req.job
    return out


def _choose(req: Request, usable: list[int]) -> Optional[tuple[int, ...]]:
    if req.pinned:
        return req.pinned if all(g in usable for g in req.pinned) else None
    return tuple(usable[:req.count]) if len(usable) >= req.count else None


def _would_use(req: Request, usable: list[int]) -> list[int]:
    """The free GPUs a waiting job keeps from the jobs behind it."""
    if req.pinned:
        return [g for g in req.pinned if g in usable]
    return usable[:req.count]


def impossible(req: Request, inventory: list[int]) -> Optional[str]:
    """Why the inventory can never satisfy the request (None: it can, once the GPUs are free)."""
    inventory = sorted(set(inventory))
    have = _list(inventory) or "none"
    if req.pinned:
        missing = [g for g in req.pinned if g not in inventory]
        if missing:
            return (f"waiting: GPU {_list(missing)} is not among the daemon's GPUs ({have}); "
                    "edit the job's device or the daemon's `gpus`")
    elif req.count > len(inventory):
        return f"waiting: needs {req.count} GPUs, the daemon has {len(inventory)} ({have})"
    return None


def _why_waiting(req: Request, busy: Mapping[int, Holder], reserved: Mapping[int, str]) -> str:
    def holder(g: int) -> Optional[str]:
        if g in busy:
            return busy[g].why
        if g in reserved:
            return f"kept for {reserved[g]}, ahead in the queue"
        return None

    if req.pinned:
        held = [(g, holder(g)) for g in req.pinned if holder(g)]
        return "waiting for " + ", ".join(f"GPU {g} ({who})" for g, who in held)
    held = sorted(set(busy) | set(reserved))
    shown = ", ".join(f"GPU {g} ({holder(g)})" for g in held[:4]) + (", ..." if len(held) > 4 else "")
    return f"waiting for {req.count} free GPU{'s' if req.count > 1 else ''}: {shown}"


def _list(gpus: Iterable[int]) -> str:
    return ",".join(str(g) for g in gpus)
