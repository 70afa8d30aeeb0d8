"""The daemon loop's plumbing: one thread waits for child exits and for work other threads hand it.

Child exits arrive as readable pidfds on a selector. Control requests and drop-directory files
arrive from other threads as callables on a queue, plus a byte on a wake pipe so the waiting
thread returns at once. Everything that changes job state then runs on that one thread.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import selectors
from concurrent.futures import Future
from typing import Any, Callable, Hashable


class Reactor:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: "queue.Queue[tuple[Callable[[], Any], Future]]" = queue.Queue()

    # -- file descriptors (child pidfds) -----------------------------------------------
    def watch(self, fd: int, key: Hashable) -> None:
        self.sel.register(fd, selectors.EVENT_READ, key)

    def unwatch(self, fd: int) -> None:
        self.sel.unregister(fd)

    def wait(self, timeout: float) -> list[Hashable]:
        """The keys of the watched descriptors that became readable within ``timeout`` (a wake
        returns early with none of its own)."""
        ready = []
        for key, _ in self.sel.select(timeout):
            if key.data is None:
                self._drain_wake()
            else:
                ready.append(key.data)
        return ready

    def wake(self) -> None:
        """Signal-handler safe: make ``wait`` return now."""
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: a wake is already pending

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # -- calls from other threads ------------------------------------------------------
    def post(self, fn: Callable[[], Any]) -> Future:
        """Queue ``fn`` for the loop thread without waiting for it."""
        fut: Future = Future()
        self._calls.put((fn, fut))
        self.wake()
        return fut

    def call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run ``fn`` on the loop thread and return its result.

        ``TimeoutError`` when the loop did not get to it in time; it is then dropped, never run
        later behind the caller's back. (concurrent.futures' own TimeoutError is not the
        builtin one before Python 3.11.)
        """
        fut = self.post(fn)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            if fut.cancel():
                raise TimeoutError(f"the daemon did not get to the request within {timeout:g}s; "
                                   "it was dropped and nothing was done") from None
        try:
            return fut.result(timeout)  # it started meanwhile: its effects are happening, so wait
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"the request is still running after {2 * timeout:g}s; it may yet "
                               "take effect") from None

    def run_calls(self) -> None:
        """Run every queued call on this (the loop's) thread."""
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue  # its caller gave up waiting: dropped, as it was told
            try:
                fut.set_result(fn())
            except BaseException as exc:  # the caller gets it; the loop carries on
                fut.set_exception(exc)
