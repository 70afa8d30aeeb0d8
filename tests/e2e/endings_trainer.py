"""Test-only stand-in for Ultralytics (see tests/e2e/fake_trainer.py) that ends the way the job's
name asks, for the policy's endings that a real CPU training cannot produce on demand:

- ``estale*``: attempts 1 and 2 fail during setup with a stale NFS handle, as a labels cache read
  on a flapping NFS mount does; attempt 3 trains a batch and finishes.
- ``preempted*``: every attempt is TERMed at its start and exits 75 before any batch, as a Slurm
  allocation shorter than the setup does.
"""

import errno
import os
import time

from supervisor.child.stop import exit_preempted

if plan["job"].startswith("estale"):  # noqa: F821
    if plan["attempt"] <= 2:  # noqa: F821
        print(f"endings trainer: attempt {plan['attempt']} reads the labels cache", flush=True)  # noqa: F821
        raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), "/nfs/data/labels/train.cache")
    reporter.state["first_batch_at"] = time.time()  # noqa: F821
    reporter.beat(force=True, phase="training", epoch=1, batch=1, batches=1)  # noqa: F821
    print("endings trainer: trained, finishing", flush=True)
elif plan["job"].startswith("preempted"):  # noqa: F821
    exit_preempted(reporter, "before training")  # noqa: F821
else:
    raise SystemExit(f"endings trainer: no ending for job {plan['job']}")  # noqa: F821
