"""Shared fixtures: a generated dataset and real checkpoints from a short real training."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.demo import make_dataset


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """data.yaml of 16 generated 64x64 images with coloured boxes."""
    return make_dataset(tmp_path_factory.mktemp("dataset"), images=16, size=64)


def offline_env(config_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(config_dir), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="session")
def real_checkpoints(tmp_path_factory, dataset) -> dict[str, Path]:
    """Checkpoints from a real 2-epoch CPU training.

    ``save_period=1`` keeps resumable ``epoch0.pt``/``epoch1.pt``; ``last.pt`` is
    stripped by Ultralytics' final_eval (epoch -1, no optimizer).
    """
    root = tmp_path_factory.mktemp("ckpt-run")
    cmd = [
        sys.executable, "-c",
        "import sys; from ultralytics import YOLO; "
        "YOLO('yolov8n.yaml').train(data=sys.argv[1], epochs=2, imgsz=64, batch=8, workers=0, "
        "device='cpu', plots=False, amp=False, save_period=1, project=sys.argv[2], name='run', val=True)",
        str(dataset), str(root),
    ]
    subprocess.run(cmd, check=True, env=offline_env(root / "cfg"), capture_output=True, timeout=600)
    weights = root / "run" / "weights"
    return {
        "resumable0": weights / "epoch0.pt",
        "resumable1": weights / "epoch1.pt",
        "finished": weights / "last.pt",
        "run_dir": root / "run",
    }
