"""Test-only stand-in for Ultralytics, run by supervisor.child.train when
YOLO_SUPERVISOR_FAKE_TRAINER names this file: a cheap, long-running "training"
for control-plane tests where training itself is not the point.

It reports a trained batch (so the job becomes `running`), prints a numbered line
to the job log every tenth of a second, and on SIGTERM exits like the real child
does (`preempted`). Globals ``plan`` and ``reporter`` come from the child.
"""

import time

from supervisor.child.stop import exit_preempted

reporter.state["first_batch_at"] = time.time()  # noqa: F821
print(f"fake trainer: attempt {plan['attempt']} resume={plan['resume']}", flush=True)  # noqa: F821
line = 0
while True:
    if reporter.preempt_requested:  # noqa: F821
        exit_preempted(reporter, "fake trainer")  # noqa: F821
    line += 1
    reporter.beat(force=line == 1, phase="training", epoch=1, batch=line % 10 + 1, batches=10)  # noqa: F821
    print(f"fake line {line}", flush=True)
    time.sleep(0.1)  # the fake workload's pace, not test synchronisation
