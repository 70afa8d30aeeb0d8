"""The environment a training runs in: built for its owner, never the root daemon's own.

A root daemon's environment is root's (its HOME, PATH, an admin's token): none of it may reach
a job that runs as another user. Such a job gets a clean baseline (the owner's HOME, USER,
LOGNAME and SHELL; a standard PATH headed by the training interpreter's folder; the locale;
TZ), the variables config.yaml's ``pass_env`` names (CUDA and NCCL settings an admin wants
passed), the daemon's own ``YOLO_SUPERVISOR_*`` settings, then the job's own ``env:`` and
``env_file:`` values, then the daemon's markers, which nothing may override. A job that runs as
the daemon's own user (a per-user daemon) starts from the daemon's environment, which is that
user's own.

Values from ``env:`` and ``env_file:`` are secrets (API keys): they are stored in the 0600
database only, and only their names are ever shown.
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from supervisor import safefs

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
STANDARD_PATH = "/usr/local/bin:/usr/bin:/bin"
LOCALE_NAMES = ("LANG", "LANGUAGE", "TZ")
DAEMON_PREFIX = "YOLO_SUPERVISOR_"
MAX_ENV_FILE_BYTES = 64 * 1024
# Set by the daemon for every attempt, or choosing the job's GPUs behind placement's back: a job
# may not set them (a forged marker would make another of the owner's jobs look like this one).
RESERVED = frozenset({"YOLO_OFFLINE", "YOLO_CONFIG_DIR", "PYTHONUNBUFFERED", "CUDA_DEVICE_ORDER",
                      "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"})


@dataclass(frozen=True)
class JobEnvironment:
    """What the daemon adds to an attempt's environment beyond its markers."""

    pass_env: tuple[str, ...] = ()                         # config.yaml's pass_env
    values: Mapping[str, str] = field(default_factory=dict)  # the job's env: and env_file: (secrets)


class EnvFileError(ValueError):
    """An env_file that cannot be used; the message names the file and line, never a value."""


def check_pass_env_name(name: str) -> str:
    """``NAME`` or a prefix ``NAME_*``; ValueError otherwise."""
    if not isinstance(name, str) or not ENV_NAME.match(name.removesuffix("*")):
        raise ValueError(f"{name!r} is not a variable name (or a prefix ending in *, such as NCCL_*)")
    return name


def job_variable_problem(name: str) -> Optional[str]:
    """Why a job may not set ``name`` (None when it may)."""
    if not ENV_NAME.match(name):
        return "not a variable name (letters, digits and _, not starting with a digit)"
    if name.startswith(DAEMON_PREFIX) or name in RESERVED:
        return "set by the daemon for every attempt; a job cannot change it"
    return None


def passed(daemon_env: Mapping[str, str], patterns: Sequence[str]) -> dict[str, str]:
    """The daemon's variables that ``pass_env`` names (exactly, or by a ``PREFIX*``)."""
    out = {}
    for key, value in daemon_env.items():
        for pattern in patterns:
            if key == pattern or (pattern.endswith("*") and key.startswith(pattern[:-1])):
                out[key] = value
                break
    return out


def account_variables(uid: int) -> dict[str, str]:
    """HOME, USER, LOGNAME and SHELL of the account (what a login would set)."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return {"HOME": "/", "USER": str(uid), "LOGNAME": str(uid), "SHELL": "/bin/sh"}
    return {"HOME": pw.pw_dir or "/", "USER": pw.pw_name, "LOGNAME": pw.pw_name, "SHELL": pw.pw_shell or "/bin/sh"}


def baseline(daemon_env: Mapping[str, str], uid: int, python: str) -> dict[str, str]:
    """A login-like environment for ``uid``: nothing of the daemon's but the locale and TZ."""
    env = account_variables(uid)
    folder = os.path.dirname(python)
    env["PATH"] = f"{folder}:{STANDARD_PATH}" if folder and folder not in STANDARD_PATH.split(":") else STANDARD_PATH
    env.update({k: v for k, v in daemon_env.items() if k in LOCALE_NAMES or k.startswith("LC_")})
    return env


def build(daemon_env: Mapping[str, str], run_as: Optional[int], python: str, environment: JobEnvironment,
          markers: Mapping[str, str]) -> dict[str, str]:
    """The attempt's environment. ``run_as``: the uid it runs as when that is not the daemon's own
    (None: the daemon's user, whose environment the daemon's already is)."""
    if run_as is None:
        env = dict(daemon_env)
    else:
        env = baseline(daemon_env, run_as, python)
        env.update(passed(daemon_env, environment.pass_env))
        env.update({k: v for k, v in daemon_env.items() if k.startswith(DAEMON_PREFIX)})
    env.update(environment.values)
    env.update(markers)
    return env


def parse_env_file(text: str, where: str) -> dict[str, str]:
    """``NAME=value`` lines (``export`` allowed, ``#`` comments, blank lines, one level of quotes).

    EnvFileError names the line and never the value: the file holds secrets."""
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep:
            raise EnvFileError(f"{where}: line {number}: expected NAME=value")
        problem = job_variable_problem(name)
        if problem:
            raise EnvFileError(f"{where}: line {number}: {name[:64]!r}: {problem}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if "\0" in value:
            raise EnvFileError(f"{where}: line {number}: {name}: the value holds a NUL byte")
        out[name] = value
    return out


def job_environment(env: Optional[Mapping[str, str]], env_file: Optional[str], owner: Optional[safefs.Identity],
                    pass_env: Sequence[str]) -> JobEnvironment:
    """What the attempt's environment gets beyond the baseline: config.yaml's pass_env and the
    job's env: and env_file: (read as the owner, at each launch: a changed key reaches the next
    attempt). EnvFileError names the file and line, never a value. Reads a file: off the loop."""
    values = dict(env or {})
    if env_file:
        with safefs.as_user(owner):  # the owner's file, read with the owner's rights
            try:
                data = safefs.read_regular(env_file, MAX_ENV_FILE_BYTES + 1)
            except OSError as err:
                raise EnvFileError(f"env_file {env_file}: cannot read it as the job's owner: "
                                   f"{err.strerror or err}") from None
        if len(data) > MAX_ENV_FILE_BYTES:
            raise EnvFileError(f"env_file {env_file}: over the {MAX_ENV_FILE_BYTES} byte limit")
        values.update(parse_env_file(data.decode("utf-8", errors="replace"), f"env_file {env_file}"))
    return JobEnvironment(pass_env=tuple(pass_env), values=values)
