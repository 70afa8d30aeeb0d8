"""The drop directory: job YAML files placed in HOME/inbox are validated and accepted or rejected.

Accepted files move to inbox/accepted/, rejected ones to inbox/rejected/ with a
NAME.error file beside them saying what is wrong and where (line for YAML
syntax, field path for everything else). A file is opened without following
links and read only when it is a regular file under the size limit, so no
dropped file can make the daemon block, read gigabytes, or read a file the
dropper could not.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from supervisor import safefs

from supervisor.control.peer import actor_for_uid
from supervisor.control.protocol import one_line
from supervisor.jobs.spec import MAX_SPEC_BYTES, SpecError
from supervisor.store import StoreError

if TYPE_CHECKING:
    from supervisor.daemon.core import Daemon

SUFFIXES = (".yaml", ".yml")
# accepted/ and rejected/ as they always were (droppers read their NAME.error), not the daemon's 0077 umask.
INBOX_FOLDER_MODE = 0o755


def is_candidate(path: Path) -> bool:
    """Job files only: no dotfiles, editor temp files or other suffixes."""
    name = path.name
    return (not name.startswith((".", "#")) and not name.endswith("~")
            and path.suffix.lower() in SUFFIXES)


def candidates(folder: Path) -> Iterator[Path]:
    """Job files now in ``folder`` (the start-up scan), oldest name first."""
    try:
        entries = sorted(folder.iterdir())
    except FileNotFoundError:
        return
    for path in entries:
        if is_candidate(path) and not path.is_dir():
            yield path


def handle_drop_file(daemon: "Daemon", path: Path) -> bool:
    """Validate one dropped file and accept or reject it; True when accepted.

    Runs on the daemon's loop thread. A file that is already gone (handled
    before, or removed by its writer) is ignored.
    """
    moved: list[Path] = []
    try:
        text, st = read_drop_file(path)
        daemon.submit(text, source=f"inbox:{one_line(path.name)}", actor=f"{actor_for_uid(st.st_uid)} via drop directory",
                      owner=(st.st_uid, st.st_gid),  # the job is the file owner's
                      on_accept=lambda: moved.append(_move(path, "accepted")))
    except FileNotFoundError:  # gone before it was read or moved: its writer took it back
        return False
    except SpecError as err:
        reject(daemon, path, err.problems)
        return False
    except StoreError:
        # The job could not be recorded (a full disk): the file is fine, so it goes back where
        # its owner put it, to be taken again later; it is neither accepted nor rejected.
        if moved:
            _move_back(moved[0], path)
        raise
    return True


def read_drop_file(path: Path) -> tuple[str, os.stat_result]:
    """The file's text and its stat; ``SpecError`` for anything that is not a small, plain UTF-8 file."""
    src = str(path)
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise SpecError(src, ["(file): is a symbolic link; links are not followed"])
        # O_NOFOLLOW closes the race with a swap for a link; O_NONBLOCK keeps a FIFO from blocking us.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as err:
        if err.errno == errno.ENOENT:
            raise FileNotFoundError(src) from None
        if err.errno == errno.ELOOP:
            raise SpecError(src, ["(file): is a symbolic link; links are not followed"]) from None
        raise SpecError(src, [f"(file): cannot open: {err.strerror}"]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecError(src, ["(file): not a regular file"])
        if st.st_nlink > 1:
            raise SpecError(src, [f"(file): has {st.st_nlink} hard links; drop a file of your own"])
        if st.st_mode & 0o022:
            # Another member of the inbox's group could rewrite it before it is read, and it runs as its owner.
            raise SpecError(src, [f"(file): mode {stat.S_IMODE(st.st_mode):04o} lets its group or others write "
                                  "to it, so someone else could change it before it is read (and it runs as "
                                  f"its owner): `chmod go-w {path.name}` and drop it again"])
        if st.st_size > MAX_SPEC_BYTES:
            raise SpecError(src, [f"(file): {st.st_size} bytes is over the {MAX_SPEC_BYTES} byte limit"])
        data = os.read(fd, MAX_SPEC_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(src, [f"(file): over the {MAX_SPEC_BYTES} byte limit"])
    try:
        return data.decode("utf-8"), st
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise SpecError(src, [f"line {line}: not UTF-8 text ({err.reason})"]) from None


def reject(daemon: "Daemon", path: Path, problems: list[str]) -> None:
    """Move the file to rejected/ and write what is wrong beside it."""
    try:
        _move(path, "rejected", error_text="\n".join(problems) + "\n")
    except OSError as err:
        daemon.log.error("could not move a rejected job file", file=path.name, error=str(err))
    daemon.log.warning("job file rejected", file=path.name, problems=problems)


def _move(path: Path, folder: str, error_text: Optional[str] = None) -> Path:
    """Move a dropped file into ``inbox/FOLDER/`` (with ``NAME.error`` beside it) following no link.

    Whoever may write to the inbox may put a link at ``rejected``, ``accepted`` or
    ``NAME.error``: the folder is opened without following (a link there is moved
    aside and a real folder made) and the error text replaces whatever is at its name.
    """
    with safefs.opened_dir(path.parent) as inbox_fd:
        folder_fd = safefs.ensure_subdir(inbox_fd, folder, INBOX_FOLDER_MODE)
        try:
            dest = _free_name(folder_fd, path)
            os.rename(path.name, dest, src_dir_fd=inbox_fd, dst_dir_fd=folder_fd)
            if error_text is not None:
                safefs.write_atomic_at(folder_fd, f"{dest}.error", error_text.encode())
        finally:
            os.close(folder_fd)
    return path.parent / folder / dest


def _free_name(folder_fd: int, path: Path) -> str:
    """The file's own name in the folder, or a timestamped one when that is taken (by anything)."""
    try:
        os.stat(path.name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return path.name
    return f"{path.stem}.{int(time.time() * 1000)}{path.suffix}"


def _move_back(moved: Path, path: Path) -> None:
    """Undo ``_move`` (the job could not be recorded): the file returns to where its owner put it."""
    with safefs.opened_dir(path.parent) as inbox_fd, safefs.opened_dir(moved.parent.name, inbox_fd) as folder_fd:
        os.rename(moved.name, path.name, src_dir_fd=folder_fd, dst_dir_fd=inbox_fd)
