"""Training speed and time left, from the child's progress file (pure; ``now`` is an argument).

``status`` shows them next to the progress bar. The child writes ``epoch``
(1-based, under way), ``batch``/``batches`` of that epoch, ``epoch_started_at``,
``updated_at`` (when that batch count was written) and ``epoch_times`` (wall
seconds of each epoch this attempt finished, validation included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from supervisor.contract import Progress

RECENT_EPOCHS = 5  # the ETA follows the last few epochs: speed changes (warmup, mosaic off, other jobs)
TRAINED_PHASES = ("validating", "epoch_end", "finished", "preempted")


@dataclass(frozen=True)
class Rate:
    batches_per_s: Optional[float]  # in the epoch under way (training batches only)
    epoch_s: Optional[float]        # mean wall time of the last few finished epochs of this attempt
    eta_s: Optional[float]          # time left for the remaining epochs
    epochs_done: float              # epochs finished plus the fraction of the one under way


def training_rate(progress: Progress, epochs: int, now: float) -> Rate:
    """Speed from the epoch under way, ETA from observed epoch times (from the speed before any finished)."""
    epoch, batch, batches = _num(progress.epoch), _num(progress.batch), _num(progress.batches)
    bps = _batches_per_s(progress, batch)
    times = [t for t in progress.epoch_times if isinstance(t, (int, float)) and t > 0]
    epoch_s = sum(times[-RECENT_EPOCHS:]) / len(times[-RECENT_EPOCHS:]) if times else None
    if not epoch:
        done = 0.0
    elif progress.phase in TRAINED_PHASES:
        done = float(epoch)
    else:
        done = epoch - 1 + (min(1.0, batch / batches) if batches else 0.0)
    left = max(0.0, epochs - done)
    if epoch_s is not None:
        eta = left * epoch_s
    elif bps and batches:
        eta = left * batches / bps  # no epoch finished yet: training batches only, validation not counted
    else:
        eta = None
    return Rate(batches_per_s=bps, epoch_s=epoch_s, eta_s=eta, epochs_done=done)


def _batches_per_s(progress: Progress, batch: float) -> Optional[float]:
    started, at = progress.epoch_started_at, progress.updated_at
    if progress.phase != "training" or not batch or not isinstance(started, (int, float)) \
            or not isinstance(at, (int, float)) or at <= started:
        return None
    return batch / (at - started)


def _num(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0
