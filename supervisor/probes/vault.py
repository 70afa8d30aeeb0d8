"""The checkpoint vault: the supervisor's own verified copies of recent resumable checkpoints.

Ultralytics rewrites ``last.pt`` in place with no temp file and no fsync, so a
kill mid-write (or a bad disk) can leave the only checkpoint unusable. The
vault, kept outside the weights directory, holds the newest ``keep`` copies
that passed ``inspect_checkpoint`` as ``epoch-NNNNN.pt`` (raw 0-based epoch).

Daemon-side: no torch, no unpickling beyond the probe's inert reader.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional, Union

from supervisor import safefs
from supervisor.probes.checkpoint import CheckpointInfo, CkptKind, inspect_checkpoint

_NAME = re.compile(r"^epoch-(\d{5,})\.pt$")
_TMP_PREFIX = ".incoming-"
_SEEN = ".last-source-stat"  # "mtime_ns size ino" of the source last snapshotted
_STALE_TEMP_S = 3600


class CheckpointVault:
    """Keeps the last ``keep`` verified resumable checkpoints in ``directory``."""

    def __init__(self, directory: Union[str, Path], keep: int = 2):
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)
        self._drop_stale_temps()

    # -- taking copies ---------------------------------------------------------

    def snapshot(self, src: Union[str, Path]) -> Optional[CheckpointInfo]:
        """Copy ``src`` in if it changed and is a newer resumable checkpoint; return the kept copy's info."""
        src = Path(src)
        try:
            st = src.stat()
        except FileNotFoundError:
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key == self._read_seen():
            return None  # unchanged since the last look: do not copy 30 MB again
        tmp = self._copy_in(src)
        # Verify the COPY, not the source: the source may be rewritten while we read it,
        # and what we keep must be exactly what we checked.
        info = inspect_checkpoint(tmp)
        if info.kind is CkptKind.CORRUPT or info.kind is CkptKind.MISSING:
            tmp.unlink(missing_ok=True)
            return None  # probably mid-write: leave the stat unseen so the next call retries
        self._write_seen(key)
        newest = self._epochs()
        if not info.is_resumable or (newest and info.epoch <= newest[0]):
            tmp.unlink(missing_ok=True)
            return None  # finished or not newer: nothing to keep
        return self._keep(tmp, info)

    def _copy_in(self, src: Path) -> Path:
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".pt", dir=self.directory)
        os.close(fd)
        tmp = Path(name)
        try:
            shutil.copyfile(src, tmp)
        except FileNotFoundError:
            # the source vanished between stat and copy: an empty temp inspects as corrupt -> retry later
            tmp.write_bytes(b"")
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk: a partial copy would only take more of it
            raise
        return tmp

    def _keep(self, tmp: Path, info: CheckpointInfo) -> CheckpointInfo:
        """Make a verified temp copy durable under its final name, then prune old copies."""
        _fsync_file(tmp)
        final = self.directory / f"epoch-{info.epoch:05d}.pt"
        os.replace(tmp, final)
        _fsync_dir(self.directory)
        self._prune()
        return _with_path(info, final)

    def _prune(self) -> None:
        for epoch in self._epochs()[self.keep:]:
            self._path(epoch).unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------

    def copies(self) -> list[CheckpointInfo]:
        """Every kept copy, newest first, each re-verified now (check ``is_resumable``)."""
        return [inspect_checkpoint(self._path(e)) for e in self._epochs()]

    def newest(self) -> Optional[CheckpointInfo]:
        """The newest copy that verifies as resumable now; damaged copies are skipped."""
        for epoch in self._epochs():
            info = inspect_checkpoint(self._path(epoch))
            if info.is_resumable:
                return info
        return None

    def restore_to(self, dest: Union[str, Path]) -> Optional[CheckpointInfo]:
        """Atomically put the newest verified copy at ``dest``; a non-resumable ``dest`` is moved aside first."""
        info = self.newest()
        if info is None:
            return None
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        like = dest if dest.exists() else None  # whose owner/mode the restored file takes
        if like is not None and not inspect_checkpoint(dest).is_resumable:
            # corrupt, truncated or finished: keep it for the post-mortem rather than overwrite it
            aside = _aside_name(dest)
            os.replace(dest, aside)
            like = aside
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".restoring", dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            shutil.copyfile(info.path, tmp)
            _adopt_owner(tmp, like, dest.parent)
            _fsync_file(tmp)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(dest.parent)
        return _with_path(info, dest)

    # -- helpers ---------------------------------------------------------------

    def _epochs(self) -> list[int]:
        """Epochs of the kept copies by file name, newest first."""
        found = []
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append(int(m.group(1)))
        return sorted(found, reverse=True)

    def _path(self, epoch: int) -> Path:
        return self.directory / f"epoch-{epoch:05d}.pt"

    def _read_seen(self) -> Optional[tuple[int, ...]]:
        # Kept in a file, not on the instance: the daemon builds a vault per call and restarts,
        # and without it every poll would copy and verify an unchanged 30 MB checkpoint again.
        try:
            return tuple(int(x) for x in (self.directory / _SEEN).read_text().split())
        except (OSError, ValueError):
            return None

    def _write_seen(self, key: tuple[int, int, int]) -> None:
        # A fresh temp name and a rename: the folder may be a job user's, and a link planted at a
        # fixed temp name must not carry a root daemon's write elsewhere. No fsync: losing it
        # only costs one extra copy.
        safefs.write_atomic(self.directory / _SEEN, " ".join(map(str, key)).encode())

    def _drop_stale_temps(self) -> None:
        """A daemon killed mid-copy leaves a temp file; it was never verified, so it goes.

        Only old ones: another vault object on the same directory may be copying right now.
        """
        cutoff = time.time() - _STALE_TEMP_S
        for p in self.directory.glob(_TMP_PREFIX + "*"):
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
            except FileNotFoundError:
                pass


def _with_path(info: CheckpointInfo, path: Path) -> CheckpointInfo:
    return CheckpointInfo(path, info.kind, info.epoch, info.has_optimizer, info.train_args, info.size, info.problem)


def _aside_name(dest: Path) -> Path:
    """``<name>.corrupt-<unix time>``, with a counter if that name is taken within the same second."""
    base = dest.with_name(f"{dest.name}.corrupt-{int(time.time())}")
    candidate, n = base, 1
    while candidate.exists():
        candidate = base.with_name(f"{base.name}.{n}")
        n += 1
    return candidate


def _adopt_owner(tmp: Path, like: Optional[Path], parent: Path) -> None:
    """The daemon may run as root while training runs as the job's user, who must be able to
    read and overwrite last.pt: give the restored file the old file's mode and owner, or
    the weights directory's owner with 0644 when there was no old file (best effort)."""
    ref = (like or parent).stat()
    os.chmod(tmp, (ref.st_mode & 0o777) if like else 0o644)
    if (ref.st_uid, ref.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.chown(tmp, ref.st_uid, ref.st_gid)
        except PermissionError:
            pass


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry must reach the disk too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
