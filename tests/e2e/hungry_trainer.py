"""Test-only stand-in for Ultralytics (see fake_trainer.py) that runs out of memory for real.

It reports a trained batch (the job becomes `running`), waits until the test has moved it into a
memory cgroup made for it (tests/oom.py: named ``ys-oom-...``), then allocates and touches memory
until the kernel's OOM killer ends it. A guard stops it at 1 GiB. Globals ``plan`` and ``reporter``
come from the child.
"""

import sys
import time
from pathlib import Path

reporter.state["first_batch_at"] = time.time()  # noqa: F821
line = 0
while "/ys-oom-" not in Path("/proc/self/cgroup").read_text():
    line += 1
    reporter.beat(force=line == 1, phase="training", epoch=1, batch=line % 10 + 1, batches=10)  # noqa: F821
    time.sleep(0.1)  # the fake workload's pace, not test synchronisation
held = []
for _ in range(128):
    held.append(bytearray(8 << 20))
sys.exit("hungry trainer: not killed at 1 GiB: the memory limit did not apply")
