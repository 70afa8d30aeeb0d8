"""The kernel-log reader behind ``host_oom``: recorded kernel lines, and a real OOM kill.

The recorded lines are written into the real kernel log (root may write /dev/kmsg), for pids above
the kernel's pid_max, which no process can have; the real kill is the kernel's own, of a process
over the limit of a memory cgroup made for the test (tests/oom.py).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest

from supervisor.process.classify import kernel_oom_killed
from tests.oom import kmsg_problem, memory_cgroup

# As the kernel writes them (6.x): the summary line, and the oom-kill line with its fields.
RECORDED = [
    "Out of memory: Killed process {pid} (python3) total-vm:82140kB, anon-rss:72192kB, file-rss:6684kB, "
    "shmem-rss:0kB, UID:1001 pgtables:208kB oom_score_adj:0",
    "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,"
    "task_memcg=/user.slice,task=python3,pid={pid},uid=1001",
]


def impossible_pid() -> int:
    """A pid no process can have, fresh each run (the kernel log keeps earlier runs' lines)."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    return random.randrange(pid_max + 1, 2**31 // 10)


def write_kernel_log(line: str) -> None:
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        os.write(fd, f"yolo-supervisor test, a recorded line: {line}\n".encode())
    finally:
        os.close(fd)


@pytest.fixture
def kmsg():
    problem = kmsg_problem()
    if problem:
        pytest.skip(problem)


@pytest.mark.parametrize("line", RECORDED, ids=["killed-process", "oom-kill"])
def test_an_oom_kill_of_the_pid_is_found_in_the_kernel_log(kmsg, line):
    pid = impossible_pid()
    assert not kernel_oom_killed(pid)
    write_kernel_log(line.format(pid=pid))
    assert kernel_oom_killed(pid)
    # the pid as a whole number only: not one that starts or ends with it
    assert not kernel_oom_killed(pid // 10) and not kernel_oom_killed(pid * 10 + 1)


def test_a_real_oom_kill_is_found_and_a_plain_sigkill_is_not(kmsg):
    with memory_cgroup(64 << 20) as group:
        hungry = subprocess.Popen([sys.executable, "-c", HUNGRY, str(group.path / "cgroup.procs")])
        assert hungry.wait(120) == -signal.SIGKILL            # the kernel's OOM killer, at 64 MiB
        assert kernel_oom_killed(hungry.pid)
    plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    reused = kernel_oom_killed(plain.pid)  # an earlier process with this pid was OOM-killed (rare)
    plain.kill()
    assert plain.wait(30) == -signal.SIGKILL
    assert kernel_oom_killed(plain.pid) is reused


# Joins the cgroup, then allocates (and touches) memory until the kernel kills it; a guard at 1 GiB.
HUNGRY = r"""
import os, sys
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
held = []
for _ in range(128):
    held.append(bytearray(8 << 20))
sys.exit("not killed at 1 GiB: the memory limit did not apply")
"""
