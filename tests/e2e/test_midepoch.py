"""End to end: mid-epoch checkpoints with a real daemon and real Ultralytics training on CPU.

Epochs here are long enough to be interrupted inside (30 batches of 8 generated 64 px images), and
``checkpoint_every`` is about a quarter of an epoch. Which images each attempt trained comes from
inside the training process (scripts/batch_trace), never from the daemon's own account.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from supervisor import results_csv
from supervisor.contract import read_json
from supervisor.demo import make_dataset
from supervisor.probes.checkpoint import CkptKind, inspect_checkpoint
from tests.conftest import cpu_job, ctl, offline_env, wait_for, wait_socket

TRACE_DIR = Path(__file__).resolve().parents[2] / "scripts" / "batch_trace"
IMAGES, BATCH = 240, 8
BATCHES = IMAGES // BATCH  # per epoch (the generated set keeps all 240 for training)
EVERY_S = 1.0              # checkpoint_every of the SIGKILL test


@pytest.fixture(scope="module")
def long_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("long"), images=IMAGES, size=64)


@pytest.fixture
def traced(daemon, tmp_path, monkeypatch):
    """The daemon fixture, its training children recording every batch they train."""
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TRACE_DIR), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TRACE_BATCHES", str(trace))
    daemon.trace = trace
    return daemon


def trace_lines(trace: Path) -> list[dict]:
    """Every line of the trace, in the order written: trained batches and completed saves."""
    try:
        return [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def batches(trace: Path) -> list[dict]:
    return [b for b in trace_lines(trace) if "i" in b]


def around_last_save(trace: Path, pid: int, epoch: int) -> tuple[list[dict], list[dict], dict]:
    """Process ``pid``'s batches of 0-based ``epoch`` before and after its last completed mid-epoch
    save, and that save's trace line: measured by the trace, not read from the saved record."""
    seen, before, save = [], [], None
    for line in trace_lines(trace):
        if line["pid"] != pid:
            continue
        if "saved" in line:
            before, save = list(seen), line
        elif line["epoch"] == epoch:
            seen.append(line)
    assert save is not None and before, f"no mid-epoch save of pid {pid} inside epoch {epoch + 1} in the trace"
    return before, seen[len(before):], save


def files_of(lines: list[dict]) -> Counter:
    return Counter(f for b in lines for f in b["files"])


def long_job(name: str, data: Path, epochs: int = 3, every: str = "1s", **extra) -> dict:
    spec = cpu_job(name, data, epochs=epochs, checkpoint_every=every, **extra)
    spec["train"].update(batch=BATCH, val=False)
    return spec


def progress(daemon, name) -> dict:
    return read_json(daemon.home / "jobs" / name / "progress.json") or {}


def wait_batch(daemon, epoch: int, batch: int, pid=None, timeout: float = 300) -> dict:
    """Until the child (0-based ``epoch``) has trained batch index ``batch`` or later."""
    def reached():
        for b in reversed(batches(daemon.trace)):
            if (pid is None or b["pid"] == pid) and (b["epoch"], b["i"]) >= (epoch, batch):
                return b
        daemon.assert_alive()
        return None
    return wait_for(reached, timeout, interval=0.01, what=f"training at epoch {epoch + 1} batch {batch + 1}")


def wait_mid_save(daemon, name: str, epoch: int, timeout: float = 120) -> dict:
    """Until the child reports a mid-epoch save inside ``epoch`` (1-based)."""
    return wait_for(lambda: ((m := progress(daemon, name).get("last_midepoch")) and m["epoch"] == epoch and m),
                    timeout, interval=0.02, what=f"a mid-epoch save in epoch {epoch}")


def per_epoch_counts(trace: Path, epoch: int) -> Counter:
    return Counter(f for b in batches(trace) if b["epoch"] == epoch for f in b["files"])


def assert_every_epoch_once(job, epochs: int) -> None:
    assert results_csv.read_epochs(Path(job.run_dir) / "results.csv") == list(range(1, epochs + 1))


def test_a_sigkill_late_in_an_epoch_resumes_at_the_saved_batch_and_trains_every_image(traced, long_dataset):
    d = traced
    d.start()
    d.drop(long_job("late-kill", long_dataset, every=f"{EVERY_S}s"))
    first_pid = wait_batch(d, 1, 0)["pid"]
    wait_mid_save(d, "late-kill", epoch=2)
    killed_at = wait_batch(d, 1, int(BATCHES * 0.7), pid=first_pid)
    os.kill(first_pid, signal.SIGKILL)

    job = d.wait_state("late-kill", "completed")
    first, second = d.attempts("late-kill")[:2]
    assert first.cause == "killed"
    assert second.resumed_from.endswith("weights/midepoch.pt")
    # What the last completed save covered, from the trace: the batches trained before it was on disk.
    covered, after, save = around_last_save(d.trace, first_pid, epoch=1)
    resumed = [b for b in batches(d.trace) if b["pid"] != first_pid and b["epoch"] == 1]
    assert resumed[0]["i"] == covered[-1]["i"] + 1            # the batch after the last one the save holds
    assert (second.epochs_before, second.batch_before) == (1, covered[-1]["i"] + 1)
    again = files_of(resumed)
    assert not files_of(covered).keys() & again.keys()        # nothing the save covered is trained again
    assert set(again) | set(files_of(covered)) == set(per_epoch_counts(d.trace, 1))
    assert len(per_epoch_counts(d.trace, 1)) == IMAGES        # every image of that epoch trained
    assert max(again.values()) == 1
    twice = sum(c - 1 for c in per_epoch_counts(d.trace, 1).values())
    assert twice == len(files_of(after)) == sum(len(b["files"]) for b in after)  # only what came after the save
    # ... which is at most one checkpoint_every of training: each batch but the one a kill may have cut
    # the next save short in ended less than EVERY_S after that save (slack: the save's own fsync).
    assert all(b["at"] - save["at"] < EVERY_S + 0.5 for b in after[:-1]), [b["at"] - save["at"] for b in after]
    assert killed_at["i"] >= int(BATCHES * 0.7)
    assert_every_epoch_once(job, 3)
    assert not list((Path(job.run_dir) / "weights").glob(".*.partial"))


def test_a_sigterm_trains_no_image_twice_and_skips_none(traced, long_dataset):
    d = traced
    d.start()
    d.drop(long_job("term", long_dataset, every="off"))
    first_pid = wait_batch(d, 1, BATCHES // 2)["pid"]
    os.kill(first_pid, signal.SIGTERM)

    job = d.wait_state("term", "completed")
    first, second = d.attempts("term")[:2]
    assert first.cause == "preempted" and first.exit_code == 75 and "mid-epoch save" in first.detail
    assert job.crash_restarts == 0
    covered, after, _ = around_last_save(d.trace, first_pid, epoch=1)
    assert after == []                                        # the SIGTERM save holds every batch trained
    resumed = [b for b in batches(d.trace) if b["pid"] != first_pid and b["epoch"] == 1]
    assert resumed[0]["i"] == covered[-1]["i"] + 1 >= BATCHES // 2 + 1
    assert second.resumed_from.endswith("weights/midepoch.pt") and second.batch_before == resumed[0]["i"]
    counts = per_epoch_counts(d.trace, 1)
    assert len(counts) == IMAGES
    assert set(counts.values()) == {1}                        # the README: nothing is trained twice
    assert_every_epoch_once(job, 3)


def test_a_kill_during_a_mid_epoch_save_falls_back_to_the_previous_good_state(traced, long_dataset):
    d = traced
    d.start()
    d.drop(long_job("kill-in-save", long_dataset, every="0.5s"))
    first_pid = wait_batch(d, 0, 0)["pid"]
    wait_mid_save(d, "kill-in-save", epoch=2)
    weights = Path(d.job("kill-in-save").run_dir) / "weights"
    before = inspect_checkpoint(weights / "midepoch.pt")
    assert before.kind is CkptKind.RESUMABLE
    partial = wait_for(lambda: next(iter(weights.glob(".midepoch.pt.*.partial")), None), 120, interval=0.002,
                       what="a mid-epoch save under way")
    os.kill(first_pid, signal.SIGKILL)
    # the save did not finish: the previous state is still whole (it may have advanced once before the kill)
    after = inspect_checkpoint(weights / "midepoch.pt")
    assert after.kind is CkptKind.RESUMABLE and after.position >= before.position

    job = d.wait_state("kill-in-save", "completed")
    second = d.attempts("kill-in-save")[1]
    assert (second.epochs_before, second.batch_before) == after.position
    assert not partial.exists()                               # the next attempt cleared the dead save
    for epoch in range(3):
        assert len(per_epoch_counts(d.trace, epoch)) == IMAGES
    assert_every_epoch_once(job, 3)


def test_a_run_left_by_the_daemon_still_resumes_by_hand(traced, long_dataset, tmp_path):
    d = traced
    d.start()
    wait_socket(d)
    d.drop(long_job("by-hand", long_dataset))
    wait_mid_save(d, "by-hand", epoch=2)
    assert ctl(d.home, "stop", "by-hand").returncode == 0
    job = d.wait_state("by-hand", "stopped")
    d.stop()
    last = Path(job.run_dir) / "weights" / "last.pt"
    assert inspect_checkpoint(last).epochs_done == 1          # last.pt still means "a completed epoch"

    done = subprocess.run([str(Path(sys.executable).with_name("yolo")), "train", "resume", f"model={last}"],
                          env=offline_env(tmp_path / "cfg"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert inspect_checkpoint(last).kind is CkptKind.FINISHED
    assert_every_epoch_once(job, 3)


def test_an_untested_ultralytics_falls_back_to_epoch_level_and_says_so(traced, long_dataset, monkeypatch):
    monkeypatch.setenv("YOLO_SUPERVISOR_PRETEND_ULTRALYTICS", "8.5.0")
    d = traced
    d.start()
    d.drop(long_job("old", long_dataset, epochs=2))
    first_pid = wait_batch(d, 1, BATCHES // 2)["pid"]
    os.kill(first_pid, signal.SIGTERM)

    job = d.wait_state("old", "completed")
    notes = [e.reason for e in d.events("old") if e.kind == "checkpoint"]
    assert any("ultralytics 8.5.0 is not a version" in n and "epoch-level" in n for n in notes), notes
    weights = Path(job.run_dir) / "weights"
    assert not (weights / "midepoch.pt").exists()
    second = d.attempts("old")[1]
    assert second.resumed_from.endswith("last.pt") and not second.batch_before
    counts = per_epoch_counts(d.trace, 1)
    assert len(counts) == IMAGES                              # the interrupted epoch was trained again, whole
    assert_every_epoch_once(job, 2)


def test_an_oom_with_reduce_batch_goes_on_at_the_same_image_with_half_the_batch(traced, long_dataset):
    """`drill oom` inside an epoch, `on_oom: reduce_batch`: the resume from the mid-epoch state trains
    the rest of that pass in batches of 4 from the image it stopped at; every image of the epoch is
    trained, and only those after the last save twice."""
    d = traced
    d.start()
    wait_socket(d)
    d.drop(long_job("halve", long_dataset, epochs=3, on_oom="reduce_batch", min_batch=2))
    first_pid = wait_batch(d, 1, 0)["pid"]
    wait_mid_save(d, "halve", epoch=2)
    done = ctl(d.home, "drill", "halve", "oom")
    assert done.returncode == 0, done.stderr

    job = d.wait_state("halve", {"completed", "failed", "held"})
    assert job.state == "completed", job.state_reason
    first, second = d.attempts("halve")[:2]
    assert first.cause == "cuda_oom" and job.batch_override == BATCH // 2
    assert second.resumed_from.endswith("weights/midepoch.pt") and second.batch_before > 0
    epoch = second.epochs_before                                 # 0-based: the interrupted epoch
    saved_images = second.batch_before * BATCH
    mine = [b for b in batches(d.trace) if b["pid"] == first_pid and b["epoch"] == epoch]
    resumed = [b for b in batches(d.trace) if b["pid"] != first_pid and b["epoch"] == epoch]
    assert resumed[0]["i"] * (BATCH // 2) == saved_images     # the same image, in batches of the new size
    assert all(len(b["files"]) == BATCH // 2 for b in resumed)
    counts = per_epoch_counts(d.trace, epoch)
    assert len(counts) == IMAGES                              # every image of that epoch trained
    assert sum(c - 1 for c in counts.values()) == len(mine) * BATCH - saved_images  # only after the save
    notes = [e.reason for e in d.events("halve")]
    assert any(f"batch {BATCH} -> {BATCH // 2}: epoch {epoch + 1} goes on at image {saved_images + 1}" in n
               for n in notes), notes
    assert_every_epoch_once(job, 3)


def test_a_sigterm_during_validation_saves_at_once_and_the_resume_only_validates(traced, long_dataset):
    """Validation on a real dataset takes minutes: a TERM in it is answered at the next validation batch
    with a save of the trained epoch; the resume trains no batch of that epoch again, validates it and
    writes its results.csv row once."""
    data = long_dataset.with_name("val-is-train.yaml")    # 240 validation images: a validation of seconds
    data.write_text(long_dataset.read_text().replace("val: images/val", "val: images/train"))
    d = traced
    d.start()
    spec = long_job("term-val", data, every="off")
    spec["train"]["val"] = True
    d.drop(spec)
    first_pid = wait_batch(d, 1, BATCHES - 1)["pid"]
    wait_for(lambda: (p := progress(d, "term-val")).get("phase") == "validating" and p.get("epoch") == 2, 120,
             interval=0.005, what="the validation of epoch 2")
    term_at = time.time()
    os.kill(first_pid, signal.SIGTERM)
    first = wait_for(lambda: (a := d.attempts("term-val")) and a[0].ended_at and a[0], 120, what="attempt 1 ended")
    answered_s = first.ended_at - term_at

    job = d.wait_state("term-val", {"completed", "failed", "held"})
    assert job.state == "completed", job.state_reason
    second = d.attempts("term-val")[1]
    assert first.cause == "preempted" and "saved during its validation" in first.detail, first.detail
    assert second.resumed_from.endswith("weights/midepoch.pt") and second.epochs_before == 1
    assert not [b for b in batches(d.trace) if b["pid"] != first_pid and b["epoch"] == 1]  # nothing trained twice
    assert len(per_epoch_counts(d.trace, 1)) == IMAGES and max(per_epoch_counts(d.trace, 1).values()) == 1
    assert_every_epoch_once(job, 3)
    notes = [e.reason for e in d.events("term-val")]
    assert any("only its validation and save remain" in n for n in notes), notes
    print(f"TERM during validation answered in {answered_s:.2f}s")
    assert answered_s < 30  # the save (~1 s) and a validation batch, with room for a loaded machine
