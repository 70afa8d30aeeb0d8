"""The daemon's own configuration (HOME/config.yaml), reloaded on SIGHUP."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from supervisor.address import parse_address
from supervisor.web.settings import WebSettings
from supervisor.jobs.slurm_options import SlurmSettings
from supervisor.observe.logging import get_logger
from supervisor.jobs.notify_spec import NotifySettings
from supervisor.process.jobenv import check_pass_env_name


class DaemonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    socket: Optional[str] = Field(None, description="control socket path (default HOME/supervisor.sock)")
    socket_group: Optional[str] = Field(None, description="group whose members may submit jobs and act on "
                                                         "their own")
    admin_group: Optional[str] = Field(None, description="group whose members may act on every user's jobs "
                                                        "(besides root and the daemon's user); none by default")
    pass_env: list[str] = Field(default_factory=list, description="variables of the daemon's environment passed "
                                                                  "to jobs run as their owner (NAME, or a "
                                                                  "prefix: NCCL_*)")
    jobs_dir: Optional[str] = Field(None, description="drop directory (default HOME/inbox)")
    tick_s: float = Field(1.0, gt=0, le=10, description="housekeeping interval")
    max_running: int = Field(0, ge=0, description="jobs running at once; 0 = no limit")
    metrics_address: Optional[str] = Field(None, description="host:port for Prometheus (a port alone: "
                                                            "127.0.0.1); off when unset")
    metrics_textfile_dir: Optional[str] = Field(None, description="node_exporter textfile directory; off when unset")
    log_level: str = "info"
    preflight_recheck_s: float = Field(30.0, gt=0, description="how often a job held for a missing path "
                                                               "is checked again")
    notify: NotifySettings = Field(default_factory=NotifySettings,
                                   description="notifications through apprise (docs in configs/daemon.yaml)")
    gpus: Optional[list[int]] = Field(None, description="the GPUs jobs may use (NVML indices); default: every "
                                                        "GPU NVML sees; also declares GPUs where NVML is absent")
    foreign_memory_mib: int = Field(1024, ge=0, description="memory held on a GPU by processes that are not "
                                                            "our jobs' above which the GPU counts as busy")
    executor: Literal["local", "slurm"] = Field("local", description="where attempts run (restart)")
    slurm: SlurmSettings = Field(default_factory=SlurmSettings, description="executor: slurm: defaults and polling")
    web: Optional[WebSettings] = Field(None, description="the web view (supervisor/web/); off when unset")

    @field_validator("gpus")
    @classmethod
    def _gpu_indices(cls, value: Optional[list[int]]) -> Optional[list[int]]:
        if value is not None and (any(i < 0 for i in value) or len(set(value)) != len(value)):
            raise ValueError("must list distinct GPU indices >= 0")
        return value

    @field_validator("admin_group")
    @classmethod
    def _known_group(cls, value: Optional[str]) -> Optional[str]:
        """An admin group that does not exist is a typo: refused at start and on reload."""
        if value is None or not str(value).strip() or str(value).strip().isdigit():
            return value
        try:
            grp.getgrnam(str(value).strip())
        except KeyError:
            raise ValueError(f"no group named '{value}'") from None
        return value

    @field_validator("pass_env")
    @classmethod
    def _variable_names(cls, names: list[str]) -> list[str]:
        for name in names:
            check_pass_env_name(name)
        return names

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        """Checked here, so a bad level is refused like any other field (at start and on reload)."""
        from supervisor.observe.logging import level_number

        level_number(value)
        return value.strip().lower()

    @field_validator("metrics_address", mode="before")
    @classmethod
    def _address(cls, value):
        """``9400`` (YAML reads it as a number), ``:9400``, ``host:9400`` or ``[::1]:9400``."""
        if value is None:
            return None
        parse_address(str(value))  # ValueError: reported by field like any other problem
        return str(value)


def load_config(path: Path) -> DaemonConfig:
    """Read HOME/config.yaml; a missing file gives the defaults, a bad one raises ValueError."""
    if not path.exists():
        return DaemonConfig()
    try:
        data = yaml.safe_load(path.read_text()) or {}
        config = DaemonConfig.model_validate(data)
    except (yaml.YAMLError, ValidationError) as err:
        raise ValueError(f"{path}: {_without_input(err)}") from None
    if config.notify.urls:
        _keep_private(path)
    return config


def _without_input(err: Exception) -> str:
    """pydantic's message minus the offending values: a notification URL is a secret."""
    if not isinstance(err, ValidationError):
        return str(err)
    problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                for e in err.errors()]
    return "; ".join(problems)


def _keep_private(path: Path) -> None:
    """Notification URLs are secrets: a config.yaml holding them is made 0600 (the daemon's user
    owns it); one the daemon cannot make private is refused."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & 0o077:
        return
    try:
        os.chmod(path, 0o600)
    except OSError as err:
        raise ValueError(f"{path}: holds notification URLs (secrets) but is mode {mode:04o} and cannot be "
                         f"made 0600 ({err.strerror}); chmod 600 it") from None
    get_logger().warning("config.yaml holds notification URLs: mode tightened to 0600", path=str(path),
                         old_mode=f"{mode:04o}")
