"""A save asked for by SIGTERM that fails ends the attempt (issue 10, item 12).

The callback runs in a real child process (``os._exit`` is the point), with the real callbacks
of supervisor.child.train and a stand-in trainer whose save fails as on a full disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import sys
from supervisor.child import train
from supervisor.contract import Plan

plan = Plan(job="j", attempt=1, epochs=3, train={}, progress_file=sys.argv[1], exit_record=sys.argv[2])
rep = train.Reporter(plan)
callbacks = {}

class Model:
    def add_callback(self, event, fn):
        callbacks[event] = fn

class Trainer:
    epoch, train_loader, tloss, save_dir = 1, [0] * 10, None, sys.argv[3]
    def save_model(self):
        raise OSError(28, "No space left on device")

train._install_callbacks(Model(), rep, None)  # the epoch-level path (no mid-epoch state)
rep.preempt_requested = True                   # what the SIGTERM handler sets
callbacks["on_train_batch_end"](Trainer())
print("training went on")
"""


def test_a_failed_save_on_sigterm_ends_the_attempt_instead_of_training_on(tmp_path: Path):
    exit_record = tmp_path / "exit.json"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "progress.json"), str(exit_record),
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert "training went on" not in done.stdout
    assert done.returncode == 1, done.stderr[-2000:]
    record = json.loads(exit_record.read_text())
    assert record["exit_code"] == 1 and "save on SIGTERM failed" in record["message"]
    assert "No space left" in record["message"]
