"""The daemon's hands: a bounded pool of threads for everything that may block.

The loop decides and records; anything that touches a job's files, the process table, a
checkpoint or an external command (preflight, checkpoint inspection and vault copies,
kill-and-wait, /proc scans, chown and rmtree, sbatch, squeue and scancel) is handed to
``Workers.submit``. Each task has a key (at most one task per key is in flight: a job is never
launched twice at once), and a deadline. Its result comes back to the loop as an event: a
finished future wakes the reactor, and ``deliver`` (on the loop thread) calls the task's
``on_done`` with an ``Outcome``. A task past its deadline is answered ``timed_out`` at once;
its thread's late result is dropped, and its key stays busy until that thread returns, so a
hung filesystem costs one thread per key, never a pile of them, and never the loop.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional

from supervisor.observe.logging import get_logger

MAX_WORKERS = 8  # threads; a hung one holds one of them until its system call returns
STEP_RETRY_S = 15.0  # a job step that failed (a full disk, a read-only one, no answer) is tried again after this


@dataclass(frozen=True)
class Outcome:
    """What came back from a task: its value, the exception it raised, or nothing in time."""

    value: Any = None
    error: Optional[BaseException] = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out

    def problem(self, deadline_s: float) -> str:
        """A sentence for the log or the job's history when the task did not succeed."""
        if self.timed_out:
            return f"no answer within {deadline_s:g}s"
        return str(self.error) or repr(self.error)


@dataclass
class _Task:
    key: Hashable
    future: Future
    deadline_s: float
    due: float  # monotonic
    on_done: Callable[[Outcome], None]


class Workers:
    """A bounded thread pool whose results reach the loop thread through the reactor."""

    def __init__(self, wake: Callable[[], None], max_workers: int = MAX_WORKERS):
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="worker")
        self._wake = wake
        self._tasks: dict[Hashable, _Task] = {}  # in flight, answer not yet delivered (loop thread only)
        self._late: set[Hashable] = set()        # answered "timed out", thread still running
        self._lock = threading.Lock()            # guards _late and _finished (worker threads touch them)
        self._finished: "collections.deque[Hashable]" = collections.deque()
        self.log = get_logger()

    def busy(self, key: Hashable) -> bool:
        """A task for ``key`` is in flight, or an earlier one past its deadline still runs."""
        with self._lock:
            return key in self._tasks or key in self._late

    def submit(self, key: Hashable, fn: Callable[[], Any], deadline_s: float,
               on_done: Callable[[Outcome], None]) -> bool:
        """Run ``fn`` on a worker; ``on_done`` gets its outcome on the loop thread. False (nothing
        submitted) while ``key`` is busy: the caller tries again on a later tick."""
        if self.busy(key):
            return False
        future = self._pool.submit(fn)
        self._tasks[key] = _Task(key, future, deadline_s, time.monotonic() + deadline_s, on_done)
        future.add_done_callback(lambda _f: self._note_finished(key))
        return True

    def _note_finished(self, key: Hashable) -> None:
        """A worker thread: queue the key for the loop and wake it."""
        with self._lock:
            if key in self._late:
                self._late.discard(key)  # its answer was given (timed out); the key is free again
                return
            self._finished.append(key)
        self._wake()

    def deliver(self) -> None:
        """Loop thread: hand every finished task's outcome, and every overdue one's "timed out",
        to its ``on_done``."""
        with self._lock:
            finished = list(self._finished)
            self._finished.clear()
        for key in finished:
            task = self._tasks.pop(key, None)
            if task is not None:
                self._answer(task, _outcome_of(task.future))
        now = time.monotonic()
        for task in [t for t in self._tasks.values() if t.due <= now]:
            with self._lock:
                if task.future.done():
                    continue  # finished meanwhile: delivered on the next call
                self._late.add(task.key)
            del self._tasks[task.key]
            self.log.warning("worker task past its deadline; answered as timed out", task=repr(task.key),
                             deadline_s=task.deadline_s)
            self._answer(task, Outcome(timed_out=True))

    def next_due(self) -> Optional[float]:
        """Seconds until the earliest deadline (the loop waits no longer than that)."""
        if not self._tasks:
            return None
        return max(0.0, min(t.due for t in self._tasks.values()) - time.monotonic())

    def in_flight(self) -> int:
        return len(self._tasks)

    def _answer(self, task: _Task, outcome: Outcome) -> None:
        try:
            task.on_done(outcome)
        except Exception as exc:  # one task's handling must not stop the others' delivery
            self.log.exception("handling a worker's result failed", task=repr(task.key), error=repr(exc))

    def close(self) -> None:
        """Stop taking tasks; threads still running end on their own (never waited for)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _outcome_of(future: Future) -> Outcome:
    error = future.exception()
    return Outcome(error=error) if error is not None else Outcome(value=future.result())
