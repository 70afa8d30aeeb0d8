"""Usage: GPU-hours per user and per job over a period, and how many were lost to restarts.

What admins know from Slurm's ``sreport`` and gflow's stats, from our own records. One pure
function, ``usage(jobs, attempts_of, since, now)``; ``yolo-supervisorctl usage`` and the web
view's usage page both show what it returns.

An attempt holds its GPUs from its start to its end (or now); the part of that inside
``[since, now]`` is its hours, times its GPU count its GPU-hours (a CPU attempt has hours and
no GPU-hours). Of those, *lost* is what a restart cost:
- a restarted attempt's setup, from its start to its first trained batch (all of it when it
  died before training): the GPUs were held and nothing was learnt;
- the work it trained a second time, ``batches_redone`` (goodput's count) at the attempt's own
  speed, i.e. its training time per batch trained.
The first attempt's setup is the cost of running at all, not of a restart: not lost.
Time spent waiting in backoff or for a GPU holds no GPU, so it is goodput's down time but no
GPU-hour. Parts of an attempt outside the period count in proportion to its time inside.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

from supervisor.observe.goodput import AttemptLike, JobLike, batch_positions, goodput, reached


@dataclass
class Line:
    """One row: a job, or a user's jobs summed."""

    hours: float = 0.0
    gpu_hours: float = 0.0
    lost_hours: float = 0.0
    lost_gpu_hours: float = 0.0
    attempts: int = 0
    restarts: int = 0

    def add(self, other: "Line") -> None:
        for name in ("hours", "gpu_hours", "lost_hours", "lost_gpu_hours", "attempts", "restarts"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def rounded(self) -> dict[str, Any]:
        out = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}  # seconds stay visible
        out["lost_fraction"] = round(self.lost_hours / self.hours, 4) if self.hours > 0 else None
        return out


def gpu_count(devices: Optional[str]) -> int:
    """``"2,3"`` -> 2; None (a CPU attempt) -> 0."""
    return len([d for d in (devices or "").split(",") if d.strip()])


def overlap(start: float, end: float, since: float, now: float) -> float:
    return max(0.0, min(end, now) - max(start, since))


def job_line(job: JobLike, attempts: Sequence[AttemptLike], since: float, now: float) -> Line:
    """The job's hours in ``[since, now]`` and what its restarts lost of them."""
    attempts = sorted(attempts, key=lambda a: a.number)
    shares = {s.number: s for s in goodput(job, attempts, now).attempts}
    per_epoch = next((a.batches_per_epoch for a in reversed(attempts) if getattr(a, "batches_per_epoch", None)), None)
    line = Line()
    for a in attempts:
        end = a.ended_at if a.ended_at is not None else now
        held = end - a.started_at
        inside = overlap(a.started_at, end, since, now)
        if inside <= 0 or held <= 0:
            continue
        lost = _lost_s(a, shares.get(a.number), end, per_epoch) if a.number > 1 else 0.0
        share, gpus = inside / held, gpu_count(getattr(a, "devices", None))
        line.add(Line(hours=inside / 3600, gpu_hours=inside * gpus / 3600, lost_hours=lost * share / 3600,
                      lost_gpu_hours=lost * share * gpus / 3600, attempts=1, restarts=1 if a.number > 1 else 0))
    return line


def _lost_s(a: AttemptLike, share, end: float, per_epoch: Optional[int]) -> float:
    """Seconds of a restarted attempt spent on setup and on work done before (see the docstring)."""
    first = a.first_batch_at if a.first_batch_at is not None else end
    setup = max(0.0, min(first, end) - a.started_at)
    if share is None or share.training_s <= 0:
        return setup
    if per_epoch:
        start, stop = batch_positions(a, per_epoch)
        trained, redone = stop - start, share.batches_redone
    else:
        trained, redone = reached(a) - a.epochs_before, share.epochs_redone
    redo = share.training_s * min(1.0, redone / trained) if trained > 0 and redone > 0 else 0.0
    return setup + redo


def usage(jobs: Sequence[Any], attempts_of: Callable[[str], Sequence[AttemptLike]], since: float, now: float,
          owner_of: Callable[[Any], str]) -> dict[str, Any]:
    """Per job and per user (``owner_of(job)`` names the user), sorted by GPU-hours then hours."""
    by_job, by_user, total = [], {}, Line()
    for job in jobs:
        line = job_line(job, attempts_of(job.name), since, now)
        if not line.attempts:
            continue
        user = owner_of(job)
        by_job.append({"job": job.name, "user": user, "state": job.state, **line.rounded()})
        by_user.setdefault(user, Line()).add(line)
        total.add(line)
    order = lambda row: (-row["gpu_hours"], -row["hours"], row.get("job") or row["user"])  # noqa: E731
    users = [{"user": u, **line.rounded()} for u, line in by_user.items()]
    return {"since": since, "now": now, "jobs": sorted(by_job, key=order), "users": sorted(users, key=order),
            "total": total.rounded()}


def parse_period(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or a number of seconds -> seconds; ValueError otherwise."""
    text = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        value = float(number) * unit
    except ValueError:
        raise ValueError(f"--since: {text!r} is not a period (30d, 12h, 90m or seconds)") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"--since: {text!r} must be a positive period")
    return value
