"""The progress probe: is the training child still making progress?

The child writes a heartbeat (progress.json) from Ultralytics callbacks: train
and validation batches, epoch ends, checkpoint saves. The daemon reads it each
tick; ``stall_verdict`` is the pure rule that says when silence means a hang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from supervisor.contract import read_json
from supervisor.contract import Progress, from_json

# How many times the longest quiet interval seen so far the daemon waits
# before calling a process stalled. Slow batches, validation and saves are all
# heartbeat gaps the child measures, so the multiple covers their variance.
AUTO_MULTIPLE = 5.0


@dataclass(frozen=True)
class StallVerdict:
    stalled: bool
    silent_s: float
    timeout_s: float
    reason: str


def stall_timeout(progress: Progress, stall_timeout: Any, floor: float, first_batch_timeout: float) -> float:
    """The allowed silence for this attempt now.

    Before the first batch (dataset scan, caching, DDP setup) the longer
    ``first_batch_timeout`` applies. After it: a fixed number of seconds, or
    with ``auto`` a multiple of the longest observed heartbeat gap, never
    below ``floor``.
    """
    if not progress.first_batch_at:
        return first_batch_timeout
    if stall_timeout != "auto":
        return float(stall_timeout)
    longest = progress.max_gap_s
    return max(floor, AUTO_MULTIPLE * longest)


def stall_verdict(progress: Optional[Progress], now: float, started_at: float, stall_timeout_cfg: Any,
                  floor: float, first_batch_timeout: float) -> StallVerdict:
    """Whether the attempt has been silent for longer than allowed (``now`` is wall time)."""
    progress = progress or Progress()
    last = max(progress.updated_at or 0.0, started_at)
    timeout = stall_timeout(progress, stall_timeout_cfg, floor, first_batch_timeout)
    silent = now - last
    if silent <= timeout:
        return StallVerdict(False, silent, timeout, "")
    where = _where(progress)
    return StallVerdict(True, silent, timeout,
                        f"no progress for {silent:.0f}s (limit {timeout:.0f}s) {where}".strip())


def _where(progress: Progress) -> str:
    if not progress.first_batch_at:
        return "before the first batch"
    return f"in epoch {progress.epoch} batch {progress.batch}/{progress.batches} ({progress.phase})"


class ProgressFiles:
    """Parsed progress files, re-read only when one changed.

    Housekeeping looks at every running job each tick, and the child rewrites its file
    at most every few seconds: most looks cost a stat(), not a read and a JSON parse.
    ``read`` also returns the file's stat key, so each reader can tell for itself
    whether it has seen this version (several readers share one cache).
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int, int], Optional[Progress]]] = {}

    def read(self, path: "os.PathLike[str] | str") -> tuple[Optional[Progress], Optional[tuple[int, int, int]]]:
        path = os.fspath(path)
        try:
            st = os.stat(path)
        except OSError:
            self._cache.pop(path, None)
            return None, None
        key = (st.st_mtime_ns, st.st_ino, st.st_size)  # written by rename: a new version has a new inode
        hit = self._cache.get(path)
        if hit is not None and hit[0] == key:
            return hit[1], key
        data = from_json(Progress, read_json(path))  # written by the job's user: typed, or None
        self._cache[path] = (key, data)
        return data, key
