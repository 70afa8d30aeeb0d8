"""Observability end to end on a real interrupted CPU training: progress, goodput, the plot.

One real run (4 epochs, SIGKILL in epoch 3) serves every check, to keep CI time down.
"""

import json
import os
import signal

from PIL import Image

from supervisor.contract import read_json
from supervisor.control.cli import call
from supervisor.control.protocol import connect
from supervisor.observe.plot import plot_run
from tests.conftest import FAKE_DATA, cpu_job, ctl, wait_for, wait_socket


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def test_interrupted_run_status_goodput_and_plot(daemon, dataset, tmp_path):
    daemon.start()
    home = wait_socket(daemon).parent
    daemon.drop(cpu_job("curves", dataset, epochs=4))

    # progress: speed and ETA from the child's observed epoch times, while epoch 3 trains (epochs take a
    # second or two here, so status is asked over the socket in-process, not through a CLI subprocess)
    def training_in_epoch_3():
        p = read_json(home / "jobs" / "curves" / "progress.json") or {}
        if (p.get("epoch") or 0) < 3 or p.get("phase") != "training":
            return None
        with connect(home / "supervisor.sock") as conn:
            [row] = call(conn, "status", names=["curves"])
        return row if row["phase"] == "training" and row["batches_per_s"] and row["eta_s"] is not None else None
    row = wait_for(training_in_epoch_3, 300, what="epoch 3 training with a speed and an ETA")
    assert row["batches_per_s"] > 0 and row["epoch_s"] > 0 and 0 <= row["eta_s"] <= 2 * row["epoch_s"] + 1  # 1.5 left
    assert {"wall_s", "training_s", "down_s", "epochs_redone", "restarts_by_cause"} <= row["goodput"].keys()

    os.kill(row["pid"], signal.SIGKILL)  # after epoch 2 was saved: attempt 2 resumes from epoch 2
    daemon.wait_state("curves", "completed", timeout=400)

    attempts = daemon.attempts("curves")
    assert [a.cause for a in attempts] == ["killed", "completed"]
    recorded = [(a.number, a.cause, b.epochs_before) for a, b in zip(attempts, attempts[1:])]
    assert recorded[0][2] >= 2
    # how far each attempt trained, read from its progress file every tick (redone epochs depend on it)
    wait_for(lambda: daemon.attempts("curves")[1].epochs_reached == 4, 30, what="epochs_reached recorded")

    # goodput: the down time is the gap from the death to the next first batch, exactly
    hist = json.loads(ok(ctl(home, "history", "--json", "curves")))
    gp = hist["goodput"]
    first, second = attempts
    assert gp["restarts_by_cause"] == {"killed": 1} and gp["restarts"] == 1
    assert abs(gp["down_s"] - (second.first_batch_at - first.ended_at)) < 0.2
    assert gp["down_s"] > 0 and gp["training_s"] > 0
    assert abs(gp["wall_s"] - (gp["startup_s"] + gp["training_s"] + gp["down_s"] + gp["paused_s"])) < 0.5
    assert abs(hist["attempts"][0]["down_after_s"] - gp["down_s"]) < 0.2
    text = ok(ctl(home, "history", "curves"))
    assert "goodput: wall" in text and "restarts 1 (killed)" in text
    assert "DOWN AFTER" in text.splitlines()[3]

    # the plot, from what the daemon serves over the socket
    with connect(home / "supervisor.sock") as conn:
        hist = call(conn, "history", name="curves")
        results = call(conn, "results", name="curves")
    drawn = plot_run(results["csv"], hist, tmp_path / "drawn.png")
    assert [(m.attempt, m.cause, m.epoch) for m in drawn.markers] == recorded
    assert drawn.epochs == [1, 2, 3, 4] and not drawn.duplicate_epochs  # continuous: every epoch once
    assert all(len(v) == 4 for v in drawn.series.values())
    assert any(k.startswith("train/") for k in drawn.series) and any("mAP50-95" in k for k in drawn.series)
    down = [b for b in drawn.bands if b.kind == "down"]
    assert [(b.attempt, b.cause) for b in down] == [(1, "killed")]
    assert abs((down[0].end_s - down[0].start_s) - gp["down_s"]) < 0.2
    with Image.open(drawn.path) as img:
        assert img.format == "PNG" and img.size == drawn.size_px

    # the command itself
    out = tmp_path / "cli.png"
    printed = ok(ctl(home, "plot", "curves", "-o", str(out)))
    assert printed.strip() == f"wrote {out}: 4 epoch(s), 1 interruption(s)"
    with Image.open(out) as img:
        assert img.size == drawn.size_px


def test_plot_before_any_epoch_says_so(fake_daemon, tmp_path):
    fake_daemon.start()
    home = wait_socket(fake_daemon).parent
    fake_daemon.drop(cpu_job("early", FAKE_DATA, epochs=2))
    fake_daemon.wait_state("early", "running", timeout=60)
    result = ctl(home, "plot", "early", "-o", str(tmp_path / "early.png"))
    assert result.returncode == 5 and "nothing to plot yet" in result.stderr, result.stderr
    assert not (tmp_path / "early.png").exists()
