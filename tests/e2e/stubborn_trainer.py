"""Test-only stand-in for Ultralytics (see fake_trainer.py) that is slow to obey a SIGTERM.

- a job whose name starts with ``ignore`` ignores SIGTERM altogether (only SIGKILL ends it);
- any other job, once asked to stop, "saves" until the file ``release`` appears in its job
  folder, then exits like the real child (``preempted``, 75): a slow checkpoint save.
Globals ``plan`` and ``reporter`` come from the child.
"""

import signal
import time
from pathlib import Path

from supervisor.child.stop import exit_preempted

if plan["job"].startswith("ignore"):  # noqa: F821
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
release = Path(plan["progress_file"]).parent / "release"  # noqa: F821
reporter.state["first_batch_at"] = time.time()  # noqa: F821
line = 0
while True:
    if reporter.preempt_requested and release.exists():  # noqa: F821
        exit_preempted(reporter, "stubborn trainer")  # noqa: F821
    line += 1
    phase = "saving_for_preemption" if reporter.preempt_requested else "training"  # noqa: F821
    reporter.beat(force=line == 1, phase=phase, epoch=1, batch=line % 10 + 1, batches=10)  # noqa: F821
    time.sleep(0.1)  # the fake workload's pace, not test synchronisation
