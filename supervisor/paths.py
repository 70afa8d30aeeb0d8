"""Where the daemon keeps things under its home directory.

One place that knows the layout, so the daemon, the CLI and the tests agree.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "YOLO_SUPERVISOR_HOME"


def default_home() -> Path:
    """``$YOLO_SUPERVISOR_HOME``, else a per-user state directory."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/yolo-supervisor")
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "yolo-supervisor"


@dataclass(frozen=True)
class Home:
    """The daemon's home directory and everything in it."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "state.db"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def socket(self) -> Path:
        return self.root / "supervisor.sock"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def job_dir(self, name: str) -> Path:
        return self.root / "jobs" / name

    def job_log(self, name: str) -> Path:
        return self.job_dir(name) / "train.log"

    def job_vault(self, name: str) -> Path:
        """Verified checkpoint copies, outside Ultralytics' weights directory."""
        return self.job_dir(name) / "checkpoints"

    def job_progress(self, name: str) -> Path:
        return self.job_dir(name) / "progress.json"

    def job_exit_record(self, name: str) -> Path:
        return self.job_dir(name) / "exit.json"

    def job_plan(self, name: str) -> Path:
        return self.job_dir(name) / "attempt.json"

    def job_yolo_config(self, name: str) -> Path:
        return self.job_dir(name) / "yolo-config"

    def job_runs(self, name: str) -> Path:
        return self.job_dir(name) / "runs"

    def ensure(self) -> "Home":
        # Made 0755 whatever the daemon's umask (0077): users reach the socket, the inbox and their
        # own job folders through them. What is inside is private: the database, each job's folder.
        for d in (self.root, self.inbox, self.root / "jobs"):
            make_dir(d, 0o755)
        return self

    def ensure_job(self, name: str) -> Path:
        """The job's folder, its owner's alone (0700; chowned to the owner before a launch)."""
        top = self.job_dir(name)
        make_dir(top, 0o700)
        _narrow(top, 0o700)  # an older daemon's 0755 folder
        for d in (self.job_vault(name), self.job_yolo_config(name)):
            d.mkdir(parents=True, exist_ok=True)
        return top


def make_dir(path: Path, mode: int) -> None:
    """``mkdir -p`` that gives a folder it makes exactly ``mode`` (not narrowed by the umask)."""
    if path.is_dir():
        return
    if not path.parent.exists():
        make_dir(path.parent, 0o755)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    os.chmod(path, mode)


def _narrow(path: Path, mode: int) -> None:
    """Take group and other bits beyond ``mode`` away from a folder of the daemon's layout (the
    entry is in the daemon's own folder, so no user can have put a link there)."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) & ~mode & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & (mode | 0o700))
