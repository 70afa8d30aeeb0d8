"""Watch the drop directory with inotify and hand each complete job file to the daemon's loop.

When is a file complete? The kernel tells us for the two ways people write:
- renamed in (``mv``, an editor's save-by-rename, scp to a temp name): IN_MOVED_TO;
- written in place (``cp``, ``cat >``, an editor's in-place save): IN_CLOSE_WRITE.
A file that was written to (IN_MODIFY) but not yet closed is still open in
its writer: it waits, however long the writer pauses. Anything else that
appears without either event (a hard link, a file found by the start-up scan)
is taken once its size has not changed for ``settle_s``; a symbolic link, FIFO
or other special file is refused at once.

The watchdog thread only keeps this module's own bookkeeping; every file is
read, validated and moved on the loop thread (``Daemon.post``), like any
other change to job state.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from watchdog.events import (FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileModifiedEvent,
                             FileMovedEvent, FileSystemEvent, FileSystemEventHandler)
from watchdog.observers.inotify import InotifyObserver

from supervisor.paths import make_dir
from supervisor.control.inbox import candidates, handle_drop_file, is_candidate, reject
from supervisor.store import StoreError

if TYPE_CHECKING:
    from supervisor.daemon.core import Daemon

SETTLE_S = 1.0
RETRY_S = 15.0  # a valid file that could not be recorded (full disk) is taken again after this


@dataclass
class _Pending:
    writing: bool          # modified and not closed since: its writer still has it open
    last_change: float     # monotonic time of the last event or size change
    size: int


class DropWatcher:
    """The drop directory's inotify watch and the files in it not yet handled."""

    def __init__(self, daemon: "Daemon", folder: Path, settle_s: float = SETTLE_S):
        self.daemon = daemon
        # Resolved once: the drop directory's moves open it without following a link, and a
        # configured path may itself go through one (the operator's, not a dropper's).
        self.folder = Path(os.path.realpath(folder))
        self.settle_s = settle_s
        self._pending: dict[str, _Pending] = {}
        self._deferred: dict[str, float] = {}  # path -> monotonic time before which it is not taken
        self._lock = threading.Lock()
        self._observer: Optional[InotifyObserver] = None
        self._watched: Optional[tuple[int, int]] = None  # (st_dev, st_ino) of the folder watched
        self._made_like = (0o777, -1)
        self._lost = False  # the watched folder itself was deleted (its inode may be reused at once)

    def start(self) -> None:
        make_dir(self.folder, 0o755)  # as it always was, not the daemon's 0077 umask: users drop files here
        st = os.stat(self.folder)
        self._made_like = (stat.S_IMODE(st.st_mode), st.st_gid)  # what a folder made again gets
        self._watch()
        self.daemon.hooks += [self.keep_watching, self.handle_settled]
        self.daemon.log.info("watching drop directory", path=str(self.folder))

    def _watch(self) -> None:
        """Watch first, then scan: a file dropped in between is seen by one or both, handled once."""
        observer = InotifyObserver(generate_full_events=True)  # moves from outside arrive as moves
        observer.schedule(_Events(self), str(self.folder), recursive=False)
        observer.start()
        self._observer = observer
        st = os.stat(self.folder)
        self._watched, self._lost = (st.st_dev, st.st_ino), False
        for path in candidates(self.folder):
            self._appeared(str(path))

    def keep_watching(self, daemon: "Daemon") -> None:
        """Housekeeping hook: inotify watches an inode, not a name. A drop directory removed (and
        perhaps made again) would silently be watched no more: make it again if need be, say so,
        and watch what is there now."""
        try:
            st = os.stat(self.folder)
            now = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            now = None
        if now == self._watched and not self._lost:
            return
        if now is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            mode, gid = self._made_like
            os.chmod(self.folder, mode)
            if gid != os.stat(self.folder).st_gid:
                os.chown(self.folder, -1, gid)
        self.daemon.log.error("drop directory was " + ("removed; made again" if now is None else "replaced")
                              + " and is watched again", path=str(self.folder))
        self.stop()
        self._watch()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None

    # -- the watchdog thread: bookkeeping only ------------------------------------
    def on_event(self, event: FileSystemEvent) -> None:
        if event.event_type == "deleted" and Path(event.src_path) == self.folder:
            self._lost = True  # the watch is gone with it; keep_watching acts on the loop thread
            return
        if isinstance(event, FileMovedEvent):
            self._forget(event.src_path)
            if event.dest_path and self._ours(event.dest_path):
                self._ready(event.dest_path)
        elif not self._ours(event.src_path):
            return
        elif isinstance(event, FileClosedEvent):
            self._ready(event.src_path)
        elif isinstance(event, FileModifiedEvent):
            self._note(event.src_path, writing=True)
        elif isinstance(event, FileCreatedEvent):
            self._appeared(event.src_path)
        elif isinstance(event, FileDeletedEvent):
            self._forget(event.src_path)

    def _ours(self, path: str) -> bool:
        p = Path(path)
        return p.parent == self.folder and is_candidate(p)

    def _appeared(self, path: str) -> None:
        """Created (or found at start): wait for its writer, unless there is nothing to wait for."""
        if _special(path):
            self._ready(path)  # a link, FIFO, ...: refused at once
        else:
            self._note(path, writing=False)

    def _note(self, path: str, writing: bool) -> None:
        with self._lock:
            entry = self._pending.get(path)
            writing = writing or (entry is not None and entry.writing)
            self._pending[path] = _Pending(writing, time.monotonic(), _size(path))

    def _forget(self, path: str) -> None:
        with self._lock:
            if self._deferred.get(path, 0) > time.monotonic():
                return  # its own move to accepted/ and back, reported late: the retry stays due
            self._pending.pop(path, None)

    def _ready(self, path: str) -> None:
        with self._lock:
            if self._deferred.get(path, 0) > time.monotonic():
                return  # waiting for a retry (handle_settled takes it then)
        self._forget(path)
        self.daemon.post(lambda: self.handle(Path(path)))

    def _retry_later(self, path: str) -> None:
        """Take the file again in RETRY_S seconds (as if its last change were then)."""
        at = time.monotonic() + RETRY_S
        with self._lock:
            self._deferred[path] = at
            self._pending[path] = _Pending(False, at, _size(path))

    # -- the loop thread ----------------------------------------------------------
    def handle(self, path: Path) -> None:
        """Accept or reject one complete file; nothing in it may take the daemon down."""
        with self._lock:
            self._deferred.pop(str(path), None)
        try:
            handle_drop_file(self.daemon, path)
        except StoreError as exc:  # our disk, not the file: leave it in the inbox and try again later
            self.daemon.log.error("could not record a dropped job file; it stays in the inbox",
                                  file=path.name, error=str(exc), retry_in_s=RETRY_S)
            self._retry_later(str(path))
        except Exception as exc:
            self.daemon.log.error("drop file handling failed", file=path.name, error=repr(exc))
            if path.exists() or path.is_symlink():
                reject(self.daemon, path, [f"(file): internal error while reading it: {exc!r}"])

    def handle_settled(self, daemon: "Daemon") -> None:
        """Housekeeping hook: take files that appeared without a close or rename once they are quiet."""
        now = time.monotonic()
        due = []
        with self._lock:
            for path, entry in self._pending.items():
                if entry.writing or now - entry.last_change < self.settle_s:
                    continue
                size = _size(path)
                if size != entry.size or size == 0:  # still growing, or nothing written yet
                    entry.size, entry.last_change = size, now
                    continue
                due.append(path)
            for path in due:
                del self._pending[path]
        for path in due:
            self.handle(Path(path))


class _Events(FileSystemEventHandler):
    def __init__(self, watcher: DropWatcher):
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self.watcher.on_event(event)
        except Exception as exc:  # the observer thread must survive any surprise
            self.watcher.daemon.log.error("drop directory event failed", event=repr(event), error=repr(exc))


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return -1


def _special(path: str) -> bool:
    """Anything but a regular file (or a directory, which is not ours)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)
