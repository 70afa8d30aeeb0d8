"""Goodput: where a job's wall time went, and how much work it had to do twice.

One pure function, ``goodput(job, attempts, now)``, turns the stored job and
attempt records into a timeline of segments and the totals summed from them.
``status``, ``history``, the Prometheus collector and the plot all use it, so
they agree. No I/O, no clock: ``now`` is an argument.

The timeline starts at submission (``job.created_at``) and ends ``now`` (for a
completed or failed job: when its last attempt ended). Every second of it is in
exactly one segment, so ``wall_s == startup_s + training_s + down_s + paused_s``:

``training``
    from an attempt's first trained batch (``first_batch_at``) to its end (or now).
    Validation and checkpoint saves between epochs are inside it.
``startup``
    from submission to the job's first trained batch: waiting for a slot, dataset
    scan, model build. Ends early if the first attempt dies before training (then
    ``down`` begins).
``down``
    from each death to the next attempt's first trained batch: backoff, waiting
    for healthy GPUs, the restarted process's setup, and any attempts in between
    that died before training. A death is an attempt that ended with any cause
    but ``completed`` or ``stopped``. While the job waits to resume (backoff,
    queued, held, or stopped by a user after the death) the open gap grows with
    ``now``. Each ``down`` segment belongs to the attempt whose death began it.
``paused``
    the same gap after a user's ``stop`` or ``restart`` (cause ``stopped``):
    the job was not running because someone asked, which is not an outage.

Epochs trained twice (``epochs_redone``). ``reached(k)`` is the number of whole
epochs attempt k had trained when it ended: the largest of its
``epochs_before``, its ``epochs_after`` (the verified checkpoint it left) and
its ``epochs_reached`` (the last epoch whose training pass finished, from its
progress file, saved or not). Attempt k re-trains the epochs in
``(epochs_before(k), reached(k)]`` that an earlier attempt had already trained,
i.e. up to ``max(reached(j) for j < k)``::

    redone(k) = max(0, min(reached(k), max_prior_reached) - epochs_before(k))

With one interruption this is ``max(0, reached(k-1) - epochs_before(k))`` as
long as attempt k got that far. It counts whole epochs only: the part of an
epoch under way at a kill is lost too, but it shows up as time, not epochs.
It is non-zero when a resume starts from an older checkpoint than the run had
reached: a kill after an epoch's training pass but before its save, a
truncated ``last.pt`` replaced by an older verified copy.

Batches trained twice (``batches_redone``): the same rule on positions counted in batches,
``epoch * batches_per_epoch + batch``. An attempt starts at its state's position (a mid-epoch
state starts inside an epoch) and reaches the furthest batch its progress file showed. This is
what a mid-epoch resume saves: after a kill late in an hour-long epoch, ``epochs_redone`` is 0
either way, but ``batches_redone`` is the batches since the last save instead of the whole epoch.
Attempts whose epoch length is unknown (no progress seen) count by whole epochs only.

``restarts_by_cause`` counts, for every attempt that has a successor, the cause
of its end (so it sums to ``attempts - 1``; a job waiting in backoff has not
restarted yet).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Protocol, Sequence

from supervisor.contract import Progress

COMPLETED = "completed"
USER_STOP = "stopped"
FINAL_STATES = ("completed", "failed")

STARTUP, TRAINING, DOWN, PAUSED = "startup", "training", "down", "paused"


class JobLike(Protocol):
    state: str
    created_at: float
    updated_at: float


class AttemptLike(Protocol):
    number: int
    started_at: float
    ended_at: Optional[float]
    cause: Optional[str]
    epochs_before: int
    epochs_after: Optional[int]
    first_batch_at: Optional[float]
    epochs_reached: Optional[int]
    batch_before: Optional[int]
    batches_reached: Optional[int]
    batches_per_epoch: Optional[int]


@dataclass(frozen=True)
class Segment:
    """A stretch of the job's wall time spent one way."""

    kind: str               # startup | training | down | paused
    start: float
    end: float
    attempt: Optional[int]  # training: the attempt; down/paused: the attempt whose end began it
    cause: Optional[str] = None  # down/paused: how that attempt ended

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class AttemptGoodput:
    """One attempt's share: its training time, the down time its death caused, the epochs it redid."""

    number: int
    cause: Optional[str]
    training_s: float
    down_after_s: float      # from this attempt's death to the next first trained batch (or now)
    epochs_reached: int      # reached(k), see the module docstring
    epochs_redone: int       # redone(k)
    batches_redone: int = 0  # the same in batches (mid-epoch positions)


@dataclass(frozen=True)
class Interruption:
    """An attempt that ended without completing: where the curves resume and what it cost."""

    attempt: int
    cause: str
    at: float                # when the attempt ended
    resumed_epoch: int       # the next attempt's epochs_before (not resumed yet: the epochs it left)
    resumed: bool            # whether a next attempt exists
    gap_kind: str            # "down" after a death, "paused" after a user's stop/restart
    gap_s: float             # from its end to the next first trained batch (or now)
    epochs_redone: int       # redone by the next attempt
    batches_redone: int = 0  # redone by the next attempt, in batches
    resumed_batch: int = 0   # batches into ``resumed_epoch + 1`` the next attempt started at


@dataclass(frozen=True)
class Goodput:
    wall_s: float
    startup_s: float
    training_s: float
    down_s: float
    paused_s: float
    epochs_redone: int
    restarts_by_cause: dict[str, int]
    attempts: tuple[AttemptGoodput, ...] = ()
    batches_redone: int = 0
    interruptions: tuple[Interruption, ...] = ()
    segments: tuple[Segment, ...] = field(default=(), repr=False)

    @property
    def training_fraction(self) -> Optional[float]:
        """Share of the wall time spent training (None before any time passed)."""
        return self.training_s / self.wall_s if self.wall_s > 0 else None

    @property
    def restarts(self) -> int:
        return sum(self.restarts_by_cause.values())

    def summary(self) -> dict[str, Any]:
        """The JSON ``status`` shows: totals only, seconds rounded to 0.1."""
        return {
            "wall_s": _r(self.wall_s), "startup_s": _r(self.startup_s), "training_s": _r(self.training_s),
            "down_s": _r(self.down_s), "paused_s": _r(self.paused_s),
            "training_fraction": None if self.training_fraction is None else round(self.training_fraction, 4),
            "epochs_redone": self.epochs_redone, "batches_redone": self.batches_redone, "restarts": self.restarts,
            "restarts_by_cause": dict(self.restarts_by_cause),
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON ``history`` shows: the summary plus interruptions and the segments."""
        out = self.summary()
        out["interruptions"] = [asdict(i) for i in self.interruptions]
        out["segments"] = [asdict(s) for s in self.segments]
        return out


def _r(seconds: float) -> float:
    return round(seconds, 1)


def goodput(job: JobLike, attempts: Sequence[AttemptLike], now: float) -> Goodput:
    """Account for the job's wall time and redone epochs from its records (see the module docstring)."""
    attempts = sorted(attempts, key=lambda a: a.number)
    end = _end_of_time(job, attempts, now)
    segments = _timeline(job.created_at, attempts, end)
    per_attempt = _per_attempt(attempts, segments)
    totals = {kind: sum(s.seconds for s in segments if s.kind == kind) for kind in (STARTUP, TRAINING, DOWN, PAUSED)}
    restarts = Counter(a.cause or "unknown" for a in attempts[:-1])
    return Goodput(
        wall_s=max(0.0, end - job.created_at), startup_s=totals[STARTUP], training_s=totals[TRAINING],
        down_s=totals[DOWN], paused_s=totals[PAUSED],
        epochs_redone=sum(a.epochs_redone for a in per_attempt), restarts_by_cause=dict(sorted(restarts.items())),
        batches_redone=sum(a.batches_redone for a in per_attempt),
        attempts=tuple(per_attempt), interruptions=tuple(_interruptions(attempts, per_attempt, segments)),
        segments=tuple(segments),
    )


def _end_of_time(job: JobLike, attempts: Sequence[AttemptLike], now: float) -> float:
    """Now, or for a finished job the moment it finished (its wall time stops growing)."""
    if job.state in FINAL_STATES:
        ends = [a.ended_at for a in attempts if a.ended_at is not None]
        return max(ends) if ends else min(job.updated_at, now)
    return now


def _timeline(created_at: float, attempts: Sequence[AttemptLike], end: float) -> list[Segment]:
    """Walk the attempts in order; the gap before each first trained batch takes the kind of what began it.

    Segments are contiguous from ``created_at`` to ``end`` by construction; a
    timestamp out of order (clock steps) shortens a segment, never overlaps two.
    """
    segments: list[Segment] = []
    cursor = created_at
    gap_kind, gap_attempt, gap_cause = STARTUP, None, None

    def add(kind: str, stop: float, attempt: Optional[int], cause: Optional[str] = None) -> None:
        nonlocal cursor
        stop = min(stop, end)
        if stop > cursor:
            segments.append(Segment(kind, cursor, stop, attempt, cause))
            cursor = stop

    for a in attempts:
        a_end = a.ended_at if a.ended_at is not None else end
        if a.first_batch_at is not None:
            add(gap_kind, max(a.first_batch_at, a.started_at), gap_attempt, gap_cause)
            add(TRAINING, a_end, a.number)
        else:
            add(gap_kind, a_end, gap_attempt, gap_cause)
        if a.ended_at is not None:
            gap_kind = PAUSED if a.cause in (COMPLETED, USER_STOP) else DOWN
            gap_attempt, gap_cause = a.number, a.cause
    add(gap_kind, end, gap_attempt, gap_cause)  # waiting to resume (nothing left once finished)
    return segments


def reached(a: AttemptLike) -> int:
    """Whole epochs attempt ``a`` had trained when it ended (or by now)."""
    return max(a.epochs_before, a.epochs_after or 0, a.epochs_reached or 0)


def _batches_per_epoch(attempts: Sequence[AttemptLike]) -> Optional[int]:
    """The epoch length in batches, from the newest attempt that saw one."""
    for a in reversed(attempts):
        if _get(a, "batches_per_epoch"):
            return int(_get(a, "batches_per_epoch"))
    return None


def _get(a: AttemptLike, name: str) -> Any:
    return getattr(a, name, None)  # records from before mid-epoch positions lack these


def batch_positions(a: AttemptLike, per_epoch: int) -> tuple[int, int]:
    """(where attempt ``a`` started, how far it got), in batches from the start of training."""
    start = a.epochs_before * per_epoch + (_get(a, "batch_before") or 0)
    return start, max(start, reached(a) * per_epoch, _get(a, "batches_reached") or 0)


def _per_attempt(attempts: Sequence[AttemptLike], segments: Sequence[Segment]) -> list[AttemptGoodput]:
    out: list[AttemptGoodput] = []
    per_epoch = _batches_per_epoch(attempts)
    prior = 0        # the most epochs any earlier attempt reached
    prior_batch = 0  # the same in batches
    for i, a in enumerate(attempts):
        got = reached(a)
        redone = max(0, min(got, prior) - a.epochs_before) if i > 0 else 0
        prior = max(prior, got)
        batches_redone = redone * per_epoch if per_epoch else 0
        if per_epoch:
            start, end = batch_positions(a, per_epoch)
            batches_redone = max(0, min(end, prior_batch) - start) if i > 0 else 0
            prior_batch = max(prior_batch, end)
        out.append(AttemptGoodput(
            number=a.number, cause=a.cause,
            training_s=sum(s.seconds for s in segments if s.kind == TRAINING and s.attempt == a.number),
            down_after_s=sum(s.seconds for s in segments if s.kind == DOWN and s.attempt == a.number),
            epochs_reached=got, epochs_redone=redone, batches_redone=batches_redone))
    return out


def _interruptions(attempts: Sequence[AttemptLike], per_attempt: Sequence[AttemptGoodput],
                   segments: Sequence[Segment]) -> list[Interruption]:
    """Every attempt that ended other than ``completed``, with where the next one resumed."""
    out = []
    for i, a in enumerate(attempts):
        if a.ended_at is None or a.cause == COMPLETED:
            continue
        nxt = attempts[i + 1] if i + 1 < len(attempts) else None
        resumed_epoch = nxt.epochs_before if nxt else (a.epochs_after if a.epochs_after is not None
                                                       else a.epochs_before)
        kind = PAUSED if a.cause == USER_STOP else DOWN
        out.append(Interruption(
            attempt=a.number, cause=a.cause or "unknown", at=a.ended_at, resumed_epoch=resumed_epoch,
            resumed=nxt is not None, gap_kind=kind,
            gap_s=sum(s.seconds for s in segments if s.kind == kind and s.attempt == a.number),
            epochs_redone=per_attempt[i + 1].epochs_redone if nxt else 0,
            batches_redone=per_attempt[i + 1].batches_redone if nxt else 0,
            resumed_batch=(_get(nxt, "batch_before") or 0) if nxt else 0))
    return out


def epochs_trained(progress: Progress) -> int:
    """Whole epochs whose training pass finished, from a child's progress file (saved or not).

    ``epoch`` is the 1-based epoch under way; it counts as trained once the child
    moved on to validating it (or further); ``saved_epochs_done`` counts what was saved.
    """
    epoch = _int(progress.epoch)
    trained = epoch if progress.phase in ("validating", "epoch_end", "finished") else max(0, epoch - 1)
    return max(trained, _int(progress.saved_epochs_done))


def batches_trained(progress: Progress) -> Optional[tuple[int, int]]:
    """(batches trained from the start of training, batches per epoch) from a progress file."""
    epoch, batch, per_epoch = _int(progress.epoch), _int(progress.batch), _int(progress.batches)
    if not epoch or not per_epoch:
        return None
    if progress.phase in ("validating", "epoch_end", "finished"):
        batch = per_epoch
    return (epoch - 1) * per_epoch + min(batch, per_epoch), per_epoch


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
