"""A real memory limit for the tests of the host-OOM classification: a memory cgroup, made for the
test and removed after it, that the kernel enforces with its own OOM killer (and its own log line).

Needs root and a writable memory controller (cgroup v1 ``memory`` or v2 with ``memory`` enabled for
children); elsewhere the tests that use it skip and say why.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import wait_for

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


class MemoryCgroup:
    def __init__(self, path: Path, limit_file: str):
        self.path, self.limit_file = path, limit_file

    def limit(self, nbytes: int) -> None:
        (self.path / self.limit_file).write_text(str(nbytes))

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def name(self) -> str:
        return self.path.name


def _where() -> tuple[Path, str]:
    if os.geteuid() != 0:
        pytest.skip("a memory cgroup for a real OOM kill needs root")
    if (V1 / "memory.limit_in_bytes").exists():
        return V1, "memory.limit_in_bytes"
    controls = V2 / "cgroup.subtree_control"
    if controls.exists() and "memory" in controls.read_text().split():
        return V2, "memory.max"
    pytest.skip("no writable memory cgroup controller here (v1 memory, or v2 with memory for children)")


@contextlib.contextmanager
def memory_cgroup(nbytes: int) -> Iterator[MemoryCgroup]:
    """A fresh memory cgroup limited to ``nbytes``; its processes are killed and it is removed after."""
    top, limit_file = _where()
    path = top / f"ys-oom-{secrets.token_hex(4)}"
    try:
        path.mkdir()
    except OSError as err:
        pytest.skip(f"cannot make a memory cgroup under {top}: {err}")
    group = MemoryCgroup(path, limit_file)
    try:
        group.limit(nbytes)
        yield group
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        wait_for(lambda: _removed(path), 10, what=f"{path} removed (its processes gone)")


def _removed(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError:  # busy until its last process is reaped
        return False
    return True


def kmsg_problem() -> str | None:
    """Why the kernel log cannot be written and read here (a test writes recorded lines into it)."""
    if os.geteuid() != 0:
        return "writing recorded lines into the kernel log (/dev/kmsg) needs root"
    try:
        os.close(os.open("/dev/kmsg", os.O_RDWR | os.O_NONBLOCK))
    except OSError as err:
        return f"/dev/kmsg cannot be opened for reading and writing: {err}"
    return None
