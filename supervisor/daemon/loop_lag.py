"""How long the loop was busy: the daemon watching itself.

Every stretch of work on the loop thread (a housekeeping tick, a batch of events) is timed. The
longest in the last minute is the ``loop_lag`` gauge on /metrics; one past ``WARN_S`` is logged
as a warning with what it was, since every job and every request waited that long.
"""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Iterator

WINDOW_S = 60.0
WARN_S = 1.0


class LoopLag:
    def __init__(self, log, clock=time.monotonic):
        self.log = log
        self.clock = clock
        self._spans: "collections.deque[tuple[float, float]]" = collections.deque()  # (ended at, seconds)

    @contextlib.contextmanager
    def busy(self, what: str) -> Iterator[None]:
        started = self.clock()
        try:
            yield
        finally:
            self.note(what, self.clock() - started)

    def note(self, what: str, seconds: float) -> None:
        now = self.clock()
        self._spans.append((now, seconds))
        self._drop_old(now)
        if seconds > WARN_S:
            self.log.warning("the loop was busy for too long: every job and request waited", what=what,
                             seconds=round(seconds, 3))

    def longest(self) -> float:
        """The longest time the loop was busy in the last minute (seconds); any thread may ask."""
        since = self.clock() - WINDOW_S
        return max((s for at, s in list(self._spans) if at >= since), default=0.0)

    def _drop_old(self, now: float) -> None:
        while self._spans and self._spans[0][0] < now - WINDOW_S:
            self._spans.popleft()
