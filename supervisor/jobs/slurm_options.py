"""Slurm options: per job (the job file's ``slurm:``) and the daemon's defaults (config.yaml).

Validated like every other field, so a bad value is refused at submit (or at daemon start)
with the field named. The values end up as ``sbatch`` arguments in an argument list: no shell
ever sees them, and ``extra_args`` is held to ``--long-option[=value]`` items without shell
syntax so that a job file reads the same as the command it becomes.
"""

from __future__ import annotations

import re
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Slurm's own time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds.
_SLURM_TIME = re.compile(r"^(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?|(\d+)(?::(\d+)(?::(\d+))?)?)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")  # partition, account, qos
_MEM = re.compile(r"^[1-9][0-9]*[KMGT]?$")
# What only a shell would make sense of is refused (spaces, quotes, ;, $, backticks, redirections);
# Slurm's own syntax stays usable: --constraint=(a100|h100)&ib, --gres=gpu:a100:2, --nodelist=n[1-4].
_OPTION = re.compile(r"^--[a-z][a-z0-9-]*(=[^\s;$`<>\\'\"]*)?$")
# sbatch options the daemon sets itself (each attempt's notice, log, name, environment and
# requeue behaviour), or that have their own field here: refused in extra_args, with the reason.
_OWNED = {
    "signal": "the notice before the end is signal_before_s",
    "requeue": "the daemon resubmits after verifying the checkpoint (never two allocations of one job)",
    "no-requeue": "always set by the daemon",
    "output": "the log is the job's train.log", "error": "the log is the job's train.log",
    "open-mode": "the log is appended to", "job-name": "the daemon names its jobs (that is how it finds them)",
    "chdir": "set to the job's folder", "export": "the training's environment is set by the daemon",
    "export-file": "the training's environment is set by the daemon", "wrap": "the batch script is the daemon's",
    "uid": "the job runs as its owner", "gid": "the job runs as its owner", "parsable": "set by the daemon",
    "array": "one attempt is one job", "dependency": "the daemon starts each attempt itself",
    "hold": "the daemon starts each attempt itself", "test-only": "set by the daemon",
    "time": "use slurm.time", "partition": "use slurm.partition", "gpus": "use slurm.gpus",
    "cpus-per-task": "use slurm.cpus", "mem": "use slurm.mem", "account": "use slurm.account",
    "qos": "use slurm.qos", "nodes": "a training runs on one node", "ntasks": "one task: the training",
}


def time_seconds(value: Union[int, str]) -> int:
    """Seconds in a Slurm time limit (an int is minutes, as sbatch reads it). ValueError if bad."""
    if isinstance(value, bool):
        raise ValueError("must be minutes or a Slurm time such as 2:00:00 or 1-12:00")
    if isinstance(value, int):
        if value < 1:
            raise ValueError("must be at least 1 minute")
        return value * 60
    m = _SLURM_TIME.match(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a Slurm time: use minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
                         "D-HH:MM:SS")
    days, dh, dm, ds, a, b, c = (int(g) if g else 0 for g in m.groups())
    if m.group(1) is not None:
        seconds = ((days * 24 + dh) * 60 + dm) * 60 + ds
    elif m.group(7) is not None:
        seconds = (a * 60 + b) * 60 + c      # hours:minutes:seconds
    elif m.group(6) is not None:
        seconds = a * 60 + b                 # minutes:seconds
    else:
        seconds = a * 60                     # minutes
    if seconds < 60:
        raise ValueError(f"{value!r}: a time limit must be at least 1 minute")
    return seconds


def check_extra_arg(arg: str) -> str:
    """One ``--long-option[=value]`` item, no shell syntax, not an option the daemon owns."""
    if not isinstance(arg, str) or not _OPTION.match(arg):
        raise ValueError(f"{arg!r} is not one --long-option or --long-option=value item without spaces, "
                         "quotes, ;, $, backticks or redirections (no shell ever runs it; one option per item)")
    name = arg[2:].split("=", 1)[0]
    owned = owned_option(name)
    if owned is not None:
        shown = f"--{name}" if name == owned else f"--{name} (sbatch reads it as --{owned})"
        raise ValueError(f"{arg!r}: {shown} is not allowed here ({_OWNED[owned]})")
    return arg


def owned_option(name: str) -> Optional[str]:
    """The daemon's option ``--name`` stands for, as sbatch's getopt_long reads it: the option
    itself, or any prefix of it (``--sig`` is ``--signal``, ``--ui`` is ``--uid``); None if none."""
    if name in _OWNED:
        return name
    return next((owned for owned in sorted(_OWNED) if owned.startswith(name)), None)


class SlurmOptions(BaseModel):
    """What one job asks of Slurm; unset fields take config.yaml's ``slurm:`` defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time: Optional[Union[int, str]] = Field(None, description="time limit of each allocation")
    partition: Optional[str] = None
    gpus: Optional[int] = Field(None, ge=0, description="GPUs per allocation (default: the job's GPU count)")
    cpus: Optional[int] = Field(None, ge=1, description="--cpus-per-task")
    mem: Optional[str] = Field(None, description="memory per node: 16G, 500M, ...")
    account: Optional[str] = None
    qos: Optional[str] = None
    extra_args: Optional[tuple[str, ...]] = Field(None, description="more sbatch options, one per item")

    @field_validator("time")
    @classmethod
    def _time(cls, value):
        if value is not None:
            time_seconds(value)
        return value

    @field_validator("partition", "account", "qos")
    @classmethod
    def _name(cls, value):
        if value is not None and not _NAME.match(value):
            raise ValueError(f"{value!r} is not a Slurm name (letters, digits, '.', '_', '+', '-')")
        return value

    @field_validator("mem")
    @classmethod
    def _mem(cls, value):
        if value is not None and not _MEM.match(str(value)):
            raise ValueError(f"{value!r} is not a memory size such as 16G, 512M or 2048 (megabytes)")
        return value

    @field_validator("extra_args", mode="before")
    @classmethod
    def _extra(cls, value):
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            raise ValueError("must be a list of sbatch options, one per item (no shell)")
        for i, arg in enumerate(value):
            try:
                check_extra_arg(arg)
            except ValueError as err:
                raise ValueError(f"item {i}: {err}") from None
        return tuple(value)

    def merged_over(self, defaults: "SlurmOptions") -> "SlurmOptions":
        """These options, with every unset field taken from ``defaults``; extra_args are added to them."""
        mine = self.model_dump(exclude_none=True)
        base = defaults.model_dump(exclude_none=True)
        extra = tuple(base.pop("extra_args", ())) + tuple(mine.pop("extra_args", ()))
        return SlurmOptions(**{**base, **mine, "extra_args": extra or None})


class SlurmSettings(SlurmOptions):
    """config.yaml's ``slurm:``: the defaults of every job, and how the daemon talks to Slurm."""

    signal_before_s: int = Field(120, ge=10, le=65535,
                                 description="SIGTERM this long before the time limit (--signal=B:TERM@N)")
    poll_s: float = Field(5.0, gt=0, le=5, description="how often squeue is asked about the daemon's jobs")
    # sbatch and scancel run on the daemon's loop: keep this well under the systemd watchdog (30 s).
    command_timeout_s: float = Field(10.0, gt=0, le=60, description="deadline of each sbatch/squeue/scancel call")
    python: Optional[str] = Field(None, description="the interpreter on the compute nodes (default: the daemon's)")

    @property
    def defaults(self) -> SlurmOptions:
        return SlurmOptions(**{k: getattr(self, k) for k in SlurmOptions.model_fields})
