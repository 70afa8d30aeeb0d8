"""The checkpoint vault: the supervisor's own verified copies of recent resumable checkpoints.

Ultralytics rewrites ``last.pt`` in place with no temp file and no fsync, so a
kill mid-write (or a bad disk) can leave the only checkpoint unusable. The
vault, kept outside the weights directory, holds the newest ``keep`` copies
that passed ``inspect_checkpoint``: epoch-level ones as ``epoch-NNNNN.pt`` (raw
0-based epoch) and mid-epoch ones (weights/midepoch.pt) as ``mid-EEEEE-BBBBBB-iIIIIIIII.pt``
(completed epochs, next batch, images trained in that epoch). Copies are ordered by training
done (completed epochs, images into the next), never by batch index: after a resume with a
halved batch, batch 40 comes after batch 30 of the old size. A mid-epoch state beats the
epoch before it.

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
from supervisor.probes.checkpoint import CheckpointInfo, CkptKind, inspect_checkpoint, inspect_checkpoint_cached

_NAME = re.compile(r"^epoch-(\d{5,})\.pt$")
# mid-EPOCHS-BATCH-iIMAGES.pt; copies named before images were recorded (no -i part) order by batch
_MID_NAME = re.compile(r"^mid-(\d{5,})-(\d{6,})(?:-i(\d{9,}))?\.pt$")
_TMP_PREFIX = ".incoming-"
_SEEN = ".last-source-stat"  # "mtime_ns size ino" of the last.pt last snapshotted (other sources: per name)
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
        if key == self._read_seen(src):
            return None  # unchanged since the last look: do not copy 30 MB again
        tmp = self._copy_in(src)
        # Verify the COPY, not the source: the source may be rewritten while we read it,
        # and what we keep must be exactly what we checked.
        info = inspect_checkpoint(tmp)
        if info.kind is CkptKind.CORRUPT or info.kind is CkptKind.MISSING:
            tmp.unlink(missing_ok=True)
            return None  # probably mid-write: leave the stat unseen so the next call retries
        newest = self._positions()
        if not info.is_resumable or (newest and info.trained <= newest[0][0]):
            self._write_seen(src, key)
            tmp.unlink(missing_ok=True)
            return None  # finished or not newer: nothing to keep
        kept = self._keep(tmp, info)
        self._write_seen(src, key, kept.path.name)
        return kept

    def verified_source(self, src: Union[str, Path]) -> Optional[CheckpointInfo]:
        """The info of ``src`` without reading it again, when it is unchanged since the vault copied
        and verified it (same mtime, size and inode) and that copy is still here; else None."""
        src = Path(src)
        try:
            st = src.stat()
        except OSError:
            return None
        seen = self._read_seen_entry(src)
        if seen is None or seen[0] != (st.st_mtime_ns, st.st_size, st.st_ino) or not seen[1]:
            return None
        copy = self.directory / seen[1]
        info = inspect_checkpoint_cached(copy) if copy.exists() else None
        return _with_path(info, src) if info is not None and info.is_resumable else None

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
        safefs.fsync_file(tmp)
        final = self.directory / _name_for(info)
        os.replace(tmp, final)
        safefs.fsync_dir(self.directory)
        self._prune()
        return _with_path(info, final)

    def _prune(self) -> None:
        """Keep ``keep`` epoch-level copies (the last resumable state of a finished run is one) and
        ``keep`` mid-epoch copies newer than the newest epoch-level one; the rest are superseded."""
        found = self._positions()
        epoch_level = [(pos, p) for pos, p in found if pos[1] == 0]
        newest_epoch = epoch_level[0][0] if epoch_level else (-1, 0)
        mid = [(pos, p) for pos, p in found if pos[1] > 0 and pos > newest_epoch]
        keep = {p for _, p in epoch_level[: self.keep]} | {p for _, p in mid[: self.keep]}
        for _, p in found:
            if p not in keep:
                p.unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------

    def copies(self) -> list[CheckpointInfo]:
        """Every kept copy, newest first, each re-verified now (check ``is_resumable``)."""
        return [inspect_checkpoint_cached(p) for _, p in self._positions()]

    def newest(self, midepoch: Optional[bool] = None) -> Optional[CheckpointInfo]:
        """The newest copy that verifies as resumable now; damaged copies are skipped.

        ``midepoch``: True for mid-epoch copies only, False for epoch-level ones only."""
        for pos, path in self._positions():
            if midepoch is not None and (pos[1] > 0) != midepoch:
                continue
            info = inspect_checkpoint_cached(path)
            if info.is_resumable:
                return info
        return None

    def restore_to(self, dest: Union[str, Path], info: Optional[CheckpointInfo] = None) -> Optional[CheckpointInfo]:
        """Atomically put ``info`` (default: the newest verified copy) at ``dest``; a non-resumable
        ``dest`` is moved aside first."""
        info = info or self.newest()
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
            safefs.fsync_file(tmp)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        safefs.fsync_dir(dest.parent)
        return _with_path(info, dest)

    # -- helpers ---------------------------------------------------------------

    def _positions(self) -> list[tuple[tuple[int, int], Path]]:
        """(training done, path) of every kept copy by file name, newest first."""
        found = []
        for p in self.directory.iterdir():
            if m := _NAME.match(p.name):
                found.append(((int(m.group(1)) + 1, 0), p))
            elif m := _MID_NAME.match(p.name):
                found.append(((int(m.group(1)), int(m.group(3) or m.group(2))), p))
        return sorted(found, reverse=True)

    def _seen_file(self, src: Path) -> Path:
        return self.directory / (_SEEN if src.name == "last.pt" else f".{src.name}-source-stat")

    def _read_seen(self, src: Path) -> Optional[tuple[int, ...]]:
        entry = self._read_seen_entry(src)
        return entry[0] if entry else None

    def _read_seen_entry(self, src: Path) -> Optional[tuple[tuple[int, ...], str]]:
        """(source stat key, name of the copy made from it or "") from the seen-file."""
        # Kept in a file, not on the instance: the daemon builds a vault per call and restarts,
        # and without it every poll would copy and verify an unchanged 30 MB checkpoint again.
        try:
            parts = self._seen_file(src).read_text().split()
            return tuple(int(x) for x in parts[:3]), (parts[3] if len(parts) > 3 else "")
        except (OSError, ValueError):
            return None

    def _write_seen(self, src: Path, key: tuple[int, int, int], copy_name: str = "") -> None:
        # A fresh temp name and a rename: the folder may be a job user's, and a link planted at a
        # fixed temp name must not carry a root daemon's write elsewhere. No fsync: losing it
        # only costs one extra copy.
        safefs.write_atomic(self._seen_file(src), " ".join([*map(str, key), copy_name]).strip().encode())

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


def _name_for(info: CheckpointInfo) -> str:
    if info.midepoch:
        done, batch = info.position
        return f"mid-{done:05d}-{batch:06d}-i{info.trained[1]:09d}.pt"
    return f"epoch-{info.epoch:05d}.pt"


def _with_path(info: CheckpointInfo, path: Path) -> CheckpointInfo:
    return CheckpointInfo(path, info.kind, info.epoch, info.has_optimizer, info.train_args, info.size, info.problem,
                          info.midepoch)


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
