"""The daemon's own configuration (HOME/config.yaml), reloaded on SIGHUP."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class DaemonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    socket: Optional[str] = Field(None, description="control socket path (default HOME/supervisor.sock)")
    socket_group: Optional[str] = Field(None, description="group allowed to run mutating commands")
    jobs_dir: Optional[str] = Field(None, description="drop directory (default HOME/inbox)")
    tick_s: float = Field(1.0, gt=0, le=10, description="housekeeping interval")
    max_running: int = Field(0, ge=0, description="jobs running at once; 0 = no limit")
    metrics_address: Optional[str] = Field(None, description="host:port for Prometheus; off when unset")
    metrics_textfile_dir: Optional[str] = None
    log_level: str = "info"


def load_config(path: Path) -> DaemonConfig:
    """Read HOME/config.yaml; a missing file gives the defaults, a bad one raises ValueError."""
    if not path.exists():
        return DaemonConfig()
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return DaemonConfig.model_validate(data)
    except (yaml.YAMLError, ValidationError) as err:
        raise ValueError(f"{path}: {err}") from None
