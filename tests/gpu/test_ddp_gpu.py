"""Multi-GPU (DDP) jobs on two real GPUs with NCCL, through a real daemon (issue 12, item 6).

What tests/e2e/test_ddp_cpu.py shows on the CPU (gloo, Ultralytics' DDP launch let through on a
machine without GPUs) is checked here again where it matters: NCCL collectives on the trainer's
CUDA device, ``device=0,1`` selected by Ultralytics itself, the daemon's own restart and stall paths.
Marked ``gpu``; the DDP tests skip unless NVML sees two GPUs, the single-GPU one (found with them)
unless it sees one. None of them has run yet: this project's machines have at most one GPU, and
the session that wrote them had none.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import psutil
import pytest

from supervisor import results_csv
from supervisor.contract import read_json
from supervisor.process import launcher
from tests.conftest import cpu_job, ctl, gpu_count, wait_for, wait_socket


GPUS = gpu_count()
pytestmark = [pytest.mark.gpu, pytest.mark.slow]
two_gpus = pytest.mark.skipif(GPUS < 2, reason="needs two NVIDIA GPUs visible to NVML")
one_gpu = pytest.mark.skipif(GPUS < 1, reason="needs an NVIDIA GPU visible to NVML")

STOP_LINE = re.compile(r"yolo-supervisor \(rank (\d)\): SIGTERM: all 2 ranks stop after (epoch \d+ batch \d+/\d+)")


def ddp_job(name: str, tmp_path: Path, **extra) -> dict:
    from supervisor.demo import make_dataset

    data = make_dataset(tmp_path / "ds", images=512, size=64)
    spec = cpu_job(name, data, epochs=3, **extra)
    # 4 images a rank, 64 batches an epoch on each; DataLoader workers, which must not get the TERM
    spec["train"].update(device="0,1", batch=8, workers=2)
    return spec


def in_ddp_epoch(home: Path, name: str, epoch: int, batch: int):
    def check():
        p = read_json(home / "jobs" / name / "progress.json") or {}
        return ((p.get("ddp") or {}).get("world_size") == 2 and (p.get("epoch") or 0) >= epoch
                and (p.get("batch") or 0) >= batch and p.get("phase") == "training")
    return check


@two_gpus
def test_a_restart_stops_both_ranks_at_one_batch_saves_once_and_the_job_resumes(daemon, tmp_path):
    daemon.start()
    wait_socket(daemon)
    daemon.drop(ddp_job("ddp", tmp_path))
    wait_for(in_ddp_epoch(daemon.home, "ddp", 2, 1), 600, interval=0.02, what="epoch 2 under way on 2 GPUs")
    result = ctl(daemon.home, "restart", "ddp")  # the daemon's TERM: every process of the job but torchrun
    assert result.returncode == 0, result.stderr

    job = daemon.wait_state("ddp", "completed", timeout=900)
    first, *rest = daemon.attempts("ddp")
    assert first.cause == "preempted" and first.exit_code == 75, (first.cause, first.detail)
    assert "DDP: all 2 ranks stopped after epoch 2 batch" in first.detail
    assert first.epochs_after == 1  # an epoch-level save: the resume redoes epoch 2
    assert rest and rest[0].epochs_before == 1 and rest[0].resumed_from
    log = (daemon.home / "jobs" / "ddp" / "train.log").read_text(errors="replace")
    stops = STOP_LINE.findall(log)
    assert sorted(r for r, _ in stops) == ["0", "1"] and len({w for _, w in stops}) == 1, stops
    assert results_csv.read_epochs(Path(job.run_dir) / "results.csv") == [1, 2, 3]
    assert launcher.job_processes("ddp") == []


@two_gpus
def test_a_hung_rank_stops_rank_zeros_heartbeat_and_is_killed_as_stalled(daemon, tmp_path):
    daemon.start()
    wait_socket(daemon)
    daemon.drop(ddp_job("hang", tmp_path, health={"stall_timeout": 20, "stop_grace": 5}))
    wait_for(in_ddp_epoch(daemon.home, "hang", 2, 1), 600, interval=0.02, what="epoch 2 under way on 2 GPUs")
    rank1 = next(p for p in launcher.job_processes("hang")
                 if p.environ().get("RANK") == "1" and "LOCAL_RANK" in p.environ())
    os.kill(rank1.pid, signal.SIGSTOP)  # rank 0 waits for it in the next NCCL all_reduce

    job = daemon.wait_state("hang", "completed", timeout=900)
    first, *rest = daemon.attempts("hang")
    assert first.cause == "stalled", (first.cause, first.detail)
    assert rest[-1].cause == "completed" and rest[0].epochs_before >= 1
    assert not psutil.pid_exists(rank1.pid) or psutil.Process(rank1.pid).status() == psutil.STATUS_ZOMBIE
    assert results_csv.read_epochs(Path(job.run_dir) / "results.csv") == [1, 2, 3]


@one_gpu
def test_a_single_gpu_job_with_dataloader_workers_saves_on_sigterm(daemon, tmp_path):
    # The daemon's TERM used to reach the DataLoader workers too; PyTorch has them die of it, and the
    # trainer then failed ("DataLoader worker ... is killed by signal: Terminated") before its save.
    spec = ddp_job("one-gpu", tmp_path)
    spec["train"].update(device="0", workers=4)
    daemon.start()
    wait_socket(daemon)
    daemon.drop(spec)
    wait_for(lambda: ((read_json(daemon.home / "jobs" / "one-gpu" / "progress.json") or {}).get("epoch") or 0) >= 2,
             600, interval=0.02, what="epoch 2 under way on the GPU")
    result = ctl(daemon.home, "restart", "one-gpu")
    assert result.returncode == 0, result.stderr

    daemon.wait_state("one-gpu", "completed", timeout=900)
    first, *rest = daemon.attempts("one-gpu")
    assert first.cause == "preempted" and first.exit_code == 75, (first.cause, first.detail)
    assert rest and rest[0].resumed_from

