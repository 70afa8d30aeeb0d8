"""Preflight (real files, a real forked checker) and the checkpoint mismatch guard (plain tables)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from supervisor.daemon import preflight
from supervisor.daemon.resume import checkpoint_mismatch


def dataset(root: Path, train: str = "images/train", val: str = "images/val", make=("images/train", "images/val")):
    for d in make:
        (root / d).mkdir(parents=True, exist_ok=True)
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: {train}\nval: {val}\nnames: {{0: a}}\n")
    return data


def test_a_complete_dataset_and_a_packaged_model_pass(tmp_path):
    assert preflight.check(str(dataset(tmp_path)), "yolov8n.yaml", "j").ok


@pytest.mark.parametrize("make, missing", [
    ((), "images/train"),
    (("images/train",), "images/val"),
])
def test_a_missing_split_is_named_with_the_fix(tmp_path, make, missing):
    got = preflight.check(str(dataset(tmp_path, make=make)), None, "coco")
    assert not got.ok and got.missing == str(tmp_path / missing)
    assert str(tmp_path / missing) in got.reason and "yolo-supervisorctl edit coco data=NEW.yaml" in got.reason


def test_a_missing_dataset_file_and_root_are_named(tmp_path):
    got = preflight.check(str(tmp_path / "gone" / "data.yaml"), None, "j")
    assert got.missing == str(tmp_path / "gone" / "data.yaml") and "dataset file" in got.reason
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {tmp_path / 'nfs'}\ntrain: a\nval: b\n")
    assert preflight.check(str(data), None, "j").missing == str(tmp_path / "nfs")


def test_a_model_that_would_be_downloaded_is_missing_offline(tmp_path):
    data = str(dataset(tmp_path))
    got = preflight.check(data, "yolov8n.pt", "j")
    assert got.missing == "yolov8n.pt" and "model file" in got.reason
    weights = tmp_path / "mine.pt"
    weights.write_bytes(b"x")
    assert preflight.check(data, str(weights), "j").ok


def test_a_filesystem_that_does_not_answer_counts_as_missing(tmp_path, monkeypatch):
    """A hung NFS mount must not stall the daemon's loop: the forked check gets a deadline."""
    import time

    monkeypatch.setattr(preflight, "_check", lambda *a: time.sleep(30))
    started = time.monotonic()
    got = preflight.check(str(dataset(tmp_path)), None, "j", deadline_s=0.5)
    assert time.monotonic() - started < 10
    assert not got.ok and "did not answer within 0.5s" in got.reason


@pytest.mark.skipif(os.geteuid() != 0, reason="checking as another user needs root")
def test_as_root_the_check_runs_as_the_jobs_owner(tmp_path):
    """A root-only dataset counts as missing for a job whose owner cannot read it."""
    nobody = pwd.getpwnam("nobody")
    tmp_path.chmod(0o755)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    data = dataset(private)
    assert preflight.check(str(data), None, "j").ok                         # root reads it
    got = preflight.check(str(data), None, "j", owner=(nobody.pw_uid, nobody.pw_gid))
    assert not got.ok and got.missing == str(data)


RUN = Path("/srv/ys/jobs/j/runs/train")
JOB = {"model": "yolov8n.yaml", "data": "/data/coco.yaml", "epochs": 10, "imgsz": 640}


@pytest.mark.parametrize("args, expected", [
    ({"model": "yolov8n.yaml", "data": "/data/coco.yaml", "epochs": 10, "imgsz": 640, "save_dir": str(RUN)}, None),
    # after a resume Ultralytics records the resumed file as the model: still this run
    ({"model": str(RUN / "weights" / "last.pt"), "data": "/data/coco.yaml", "epochs": 10, "save_dir": str(RUN)},
     None),
    ({"model": "yolov8s.yaml", "data": "/data/coco.yaml", "epochs": 10, "save_dir": str(RUN)}, "model yolov8s.yaml"),
    ({"model": "yolov8n.yaml", "data": "/data/voc.yaml", "epochs": 10, "save_dir": str(RUN)}, "data /data/voc.yaml"),
    ({"model": "yolov8n.yaml", "data": "/data/coco.yaml", "epochs": 300, "save_dir": str(RUN)}, "epochs 300"),
    ({"model": "yolov8n.yaml", "data": "/data/coco.yaml", "epochs": 10, "imgsz": 320, "save_dir": str(RUN)},
     "imgsz 320"),
    ({"model": "/home/bob/runs/x/weights/last.pt", "data": "/data/coco.yaml", "epochs": 10,
      "save_dir": "/home/bob/runs/x"}, "it belongs to the run in /home/bob/runs/x"),
])
def test_a_checkpoint_of_another_run_is_named_by_its_difference(args, expected):
    got = checkpoint_mismatch(args, JOB, RUN)
    assert (got is None) if expected is None else (expected in got), got
