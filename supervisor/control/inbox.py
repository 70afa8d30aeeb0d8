"""The drop directory: job YAML files placed in HOME/inbox are validated and accepted or rejected.

Accepted files move to inbox/accepted/, rejected ones to inbox/rejected/ with a
NAME.error file beside them saying what is wrong and where.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.jobs.spec import MAX_SPEC_BYTES, SpecError

if TYPE_CHECKING:
    from supervisor.daemon.core import Daemon

SUFFIXES = (".yaml", ".yml")


def is_candidate(path: Path) -> bool:
    """Job files only: no dotfiles, editor temp files or other suffixes."""
    name = path.name
    return (not name.startswith((".", "#")) and not name.endswith("~")
            and path.suffix in SUFFIXES)


def handle_drop_file(daemon: "Daemon", path: Path) -> bool:
    """Validate one dropped file and accept or reject it; True when accepted."""
    inbox = path.parent
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    try:
        if os.path.islink(path):
            raise SpecError(str(path), ["(file): is a symbolic link; links are not followed"])
        if st.st_size > MAX_SPEC_BYTES:
            raise SpecError(str(path), [f"(file): {st.st_size} bytes is over the {MAX_SPEC_BYTES} byte limit"])
        text = path.read_text(encoding="utf-8", errors="replace")
        daemon.submit(text, source=f"inbox:{path.name}", actor=f"uid {st.st_uid} (drop directory)",
                      owner=(st.st_uid, st.st_gid) if os.geteuid() == 0 else None)
    except SpecError as err:
        _move(path, inbox / "rejected")
        (inbox / "rejected" / f"{path.name}.error").write_text("\n".join(err.problems) + "\n")
        daemon.log.warning("job file rejected", file=path.name, problems=err.problems)
        return False
    _move(path, inbox / "accepted")
    return True


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / path.name
    if dest.exists() or dest.is_symlink():
        dest = folder / f"{path.stem}.{int(time.time() * 1000)}{path.suffix}"
    os.replace(path, dest)
    return dest


def scan_inbox(daemon: "Daemon") -> None:
    """Housekeeping hook: handle every job file in the inbox."""
    inbox = daemon.home.inbox
    for path in sorted(inbox.iterdir()):
        if is_candidate(path) and (path.is_file() or path.is_symlink()):
            handle_drop_file(daemon, path)
