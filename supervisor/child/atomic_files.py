"""Every checkpoint file the child writes is replaced atomically and durably.

Ultralytics writes last.pt, best.pt and epochN.pt in place and strips the final files in place: a
kill in the middle leaves half a file. Here each goes to a temp file in the same folder (safefs's
one atomic write), is fsynced and renamed over the old one. The mid-epoch state and `extend`'s
rewrite use ``atomic_write_bytes`` too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PosixPath

from supervisor import safefs
from supervisor.contract import FINAL_RESUMABLE_NAME


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory: a kill leaves the old file.

    The child runs as the job's user in that user's run folder: the folder is opened as named
    (a link of theirs is theirs to make); the file itself is written by safefs, like the daemon's.
    """
    path = Path(path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        safefs.write_atomic_at(dir_fd, path.name, data, 0o666 & ~current_umask(), durable=True)
    finally:
        os.close(dir_fd)


def drop_partial_files(directory: Path) -> None:
    """Temp files of saves that a kill interrupted (one attempt runs at a time: they are all dead)."""
    for leftover in directory.glob(".*.partial"):
        leftover.unlink(missing_ok=True)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicPath(PosixPath):
    """A path whose ``write_bytes`` is atomic; Ultralytics writes last.pt/best.pt/epochN.pt with it."""

    def write_bytes(self, data) -> int:
        atomic_write_bytes(Path(str(self)), bytes(data))
        return len(data)


def atomic_path(path) -> AtomicPath:
    return AtomicPath(str(path))


def make_strip_atomic(trainer_module) -> None:
    """``final_eval`` strips last.pt/best.pt in place with torch.save: write to a temp file and rename."""
    original = trainer_module.strip_optimizer
    if getattr(original, "_yolo_supervisor_atomic", False):
        return

    def strip_optimizer(f="best.pt", s="", *args, **kwargs):
        target = Path(s or f)
        if Path(f).name == "last.pt" and not s and Path(f).exists():
            # The stripped file can never be resumed: keep the last resumable state for `extend`.
            atomic_write_bytes(Path(f).with_name(FINAL_RESUMABLE_NAME), Path(f).read_bytes())
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        os.close(fd)
        try:
            result = original(f, str(tmp), *args, **kwargs)
            if Path(tmp).stat().st_size == 0:  # nothing was written (not a checkpoint): leave f as it is
                Path(tmp).unlink()
                return result
            with open(tmp, "rb") as fh:
                os.fchmod(fh.fileno(), 0o666 & ~current_umask())
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            safefs.fsync_dir(target.parent)
            return result
        finally:
            Path(tmp).unlink(missing_ok=True)

    strip_optimizer._yolo_supervisor_atomic = True
    trainer_module.strip_optimizer = strip_optimizer
