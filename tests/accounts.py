"""Throwaway accounts for the tests of a root daemon: real users and groups, removed at teardown.

The tests that use them need root; elsewhere they skip and say why.
"""

from __future__ import annotations

import os
import pwd
import grp
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

# Root's own python lives under /root, which other users cannot enter; a job's child that
# drops to another uid needs an interpreter it can run. The fake trainer path of the child is
# pure stdlib, so the system python will do.
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass
class Account:
    name: str
    uid: int
    gid: int           # its own primary group
    extra_gid: int     # a supplementary group it is a member of (a dataset's group, say)
    extra_group: str


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: runs the daemon as root and a job as a throwaway user")
    if not shutil.which("useradd"):
        pytest.skip("useradd is not installed")


@pytest.fixture
def account():
    """A fresh user with its own group and one supplementary group."""
    need_root()
    tag = secrets.token_hex(3)
    name, extra = f"ystest{tag}", f"ysdata{tag}"
    _run("groupadd", extra)
    _run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", "-G", extra, name)
    pw = pwd.getpwnam(name)
    try:
        yield Account(name, pw.pw_uid, pw.pw_gid, grp.getgrnam(extra).gr_gid, extra)
    finally:
        subprocess.run(["userdel", "--force", name], capture_output=True)  # even if a process of it lingers
        subprocess.run(["groupdel", extra], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)


@pytest.fixture
def open_dir():
    """A temp folder every user can traverse (pytest's tmp_path is 0700, closed to a dropped child)."""
    path = Path(tempfile.mkdtemp(prefix="ys-sec-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def root_secret(folder: Path, name: str = "secret", text: str = "root only\n") -> Path:
    """A root-owned, mode 0600 file: what no job's user may read, write or own."""
    path = folder / name
    path.write_text(text)
    path.chmod(0o600)
    os.chown(path, 0, 0)
    return path


@dataclass
class Group:
    name: str
    gid: int


@pytest.fixture
def accounts():
    """``make(groups=())``: fresh users (their own group, plus the ``Group``s given), and ``group()``:
    a fresh group; all removed at teardown. For tests with several users of one server."""
    need_root()
    made_users: list[str] = []
    made_groups: list[str] = []

    class Factory:
        @staticmethod
        def group() -> Group:
            name = f"ysgrp{secrets.token_hex(3)}"
            _run("groupadd", name)
            made_groups.append(name)
            return Group(name, grp.getgrnam(name).gr_gid)

        @staticmethod
        def make(groups: tuple[Group, ...] = ()) -> Account:
            extra = Factory.group()
            name = f"ystest{secrets.token_hex(3)}"
            member_of = ",".join([extra.name, *(g.name for g in groups)])
            _run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", "-G", member_of, name)
            made_users.append(name)
            pw = pwd.getpwnam(name)
            return Account(name, pw.pw_uid, pw.pw_gid, extra.gid, extra.name)

    try:
        yield Factory
    finally:
        for name in made_users:
            subprocess.run(["userdel", "--force", name], capture_output=True)
            subprocess.run(["groupdel", name], capture_output=True)
        for name in made_groups:
            subprocess.run(["groupdel", name], capture_output=True)
