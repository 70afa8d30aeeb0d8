"""Where the daemon keeps things under its home directory.

One place that knows the layout, so the daemon, the CLI and the tests agree.
"""

from __future__ import annotations

import os
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
        for d in (self.root, self.inbox, self.root / "jobs"):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def ensure_job(self, name: str) -> Path:
        for d in (self.job_dir(name), self.job_vault(name), self.job_yolo_config(name)):
            d.mkdir(parents=True, exist_ok=True)
        return self.job_dir(name)
