"""End to end: a job never resumes from another run's checkpoint, and a reused name inherits nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import FAKE_DATA, cpu_job, ctl, wait_for, wait_socket


def test_a_foreign_last_pt_is_refused_with_the_difference_named(daemon, dataset, real_checkpoints):
    daemon.start()
    wait_socket(daemon)
    daemon.drop(cpu_job("own", dataset, epochs=3, checkpoint_every="off"))
    wait_for(lambda: ((j := daemon.job("own")) and j.epochs_done or 0) >= 1, 300, what="epoch 1 saved")
    assert ctl(daemon.home, "stop", "own").returncode == 0
    job = daemon.wait_state("own", "stopped")
    weights = Path(job.run_dir) / "weights"
    (weights / "midepoch.pt").unlink(missing_ok=True)
    shutil.copyfile(real_checkpoints["resumable1"], weights / "last.pt")  # another run's, copied by hand

    assert ctl(daemon.home, "start", "own").returncode == 0
    job = daemon.wait_state("own", "held", timeout=60)
    assert "is not this job's checkpoint" in job.state_reason
    assert str(real_checkpoints["run_dir"]) in job.state_reason          # where it really belongs
    assert "epochs 2 (the job's: 3)" in job.state_reason
    assert len(daemon.attempts("own")) == 1                              # never resumed from


def test_a_reused_name_inherits_nothing_of_the_removed_job(fake_daemon, real_checkpoints):
    d = fake_daemon
    d.start()
    wait_socket(d)
    d.drop(cpu_job("reuse", FAKE_DATA, epochs=3))
    d.wait_state("reuse", "running")
    assert ctl(d.home, "stop", "reuse").returncode == 0
    d.wait_state("reuse", "stopped")
    old_copy = d.home / "jobs" / "reuse" / "checkpoints" / "epoch-00001.pt"  # what its vault held
    shutil.copyfile(real_checkpoints["resumable1"], old_copy)
    assert ctl(d.home, "remove", "reuse").returncode == 0                # without --purge: files stay

    d.drop(cpu_job("reuse", FAKE_DATA, epochs=3))
    d.wait_state("reuse", "running")
    first = d.attempts("reuse")[0]
    assert first.number == 1 and first.resumed_from is None and first.epochs_before == 0
    assert not list((d.home / "jobs" / "reuse" / "checkpoints").glob("*.pt"))
    archived = list((d.home / "jobs" / ".removed").glob("reuse.*"))
    assert len(archived) == 1 and (archived[0] / "checkpoints" / "epoch-00001.pt").exists()
    assert any("moved to" in (e.reason or "") for e in d.events("reuse"))
