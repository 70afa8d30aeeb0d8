"""Real GPU checks: a real CUDA OOM classified, a real GPU training killed and resumed.

Marked ``gpu``; skipped where NVML finds no device (CI never has one).
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor import results_csv
from supervisor.contract import read_json
from supervisor.jobs.states import Cause
from supervisor.process.classify import classify, read_log_tail
from tests.conftest import cpu_job, gpu_count, wait_for


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_count() == 0, reason="no NVIDIA GPU visible to NVML")]

ALLOCATE_UNTIL_OOM = """
import torch
chunks = []
while True:
    chunks.append(torch.empty(1 << 30, dtype=torch.uint8, device='cuda'))  # 1 GiB at a time
"""


def test_real_cuda_oom_is_classified_cuda_oom(tmp_path):
    log = tmp_path / "oom.log"
    with open(log, "wb") as f:
        proc = subprocess.run([sys.executable, "-c", ALLOCATE_UNTIL_OOM], stdout=f, stderr=subprocess.STDOUT,
                              timeout=300)
    assert proc.returncode == 1
    outcome = classify(proc.returncode, None, None, read_log_tail(log), reached_training=True,
                       kernel_oom_kill=False)
    assert outcome.cause is Cause.CUDA_OOM, outcome
    assert "out of memory" in outcome.detail.lower()


def test_gpu_training_killed_and_resumed(daemon, tmp_path):
    from supervisor.demo import make_dataset

    data = make_dataset(tmp_path / "ds", images=64, size=64)
    spec = cpu_job("gpu-resume", data, epochs=2)
    spec["train"]["device"] = "0"
    daemon.start()
    daemon.drop(spec)
    prog = daemon.home / "jobs" / "gpu-resume" / "progress.json"

    def in_epoch_2():
        p = read_json(prog) or {}
        return (p.get("epoch") or 0) >= 2 and (p.get("batch") or 0) >= 1 and p.get("phase") == "training"

    wait_for(in_epoch_2, 300, interval=0.02, what="epoch 2 under way on the GPU")
    os.kill(daemon.job("gpu-resume").pid, signal.SIGKILL)

    job = daemon.wait_state("gpu-resume", "completed", timeout=300)
    attempts = daemon.attempts("gpu-resume")
    print("attempts:", [(a.number, a.cause, a.epochs_before, a.epochs_after, a.resumed_from) for a in attempts])
    print("events:", [(e.kind, e.reason) for e in daemon.events("gpu-resume")])
    assert [a.cause for a in attempts] == ["killed", "completed"]
    assert attempts[1].epochs_before == 1 and attempts[1].resumed_from
    assert results_csv.read_epochs(Path(job.run_dir) / "results.csv") == [1, 2]
