"""End to end: a job never resumes from another run's checkpoint, and a reused name inherits nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import FAKE_DATA, cpu_job, ctl, wait_for, wait_socket
from tests.unit.test_checkpoint import with_epoch


def train_then_stop(daemon, name: str, data: Path, epochs: int):
    """Start the daemon, train ``name`` until an epoch is saved, stop it; epochs: enough to be mid-run."""
    daemon.start()
    wait_socket(daemon)
    daemon.drop(cpu_job(name, data, epochs=epochs, checkpoint_every="off"))
    wait_for(lambda: ((j := daemon.job(name)) and j.epochs_done or 0) >= 1, 300, what="epoch 1 saved")
    assert ctl(daemon.home, "stop", name).returncode == 0
    return daemon.wait_state(name, "stopped")


def test_a_foreign_last_pt_is_refused_with_the_difference_named(daemon, dataset, real_checkpoints):
    job = train_then_stop(daemon, "own", dataset, epochs=8)
    weights = Path(job.run_dir) / "weights"
    (weights / "midepoch.pt").unlink(missing_ok=True)
    # another run's checkpoint, copied in by hand, further along than anything of this job's
    with_epoch(real_checkpoints["resumable1"], weights / "last.pt", 6)

    assert ctl(daemon.home, "start", "own").returncode == 0
    job = daemon.wait_state("own", "held", timeout=60)
    assert "is not this job's checkpoint" in job.state_reason
    assert str(real_checkpoints["run_dir"]) in job.state_reason          # where it really belongs
    assert "epochs 2 (the job's: 8)" in job.state_reason
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


def test_the_dataset_moved_hold_then_edit_data_resumes_from_the_same_state(daemon, dataset, tmp_path):
    """stop -> move the dataset -> start: held, naming the old path; `edit data=` -> resumes where it was."""
    import os

    from supervisor import results_csv

    moved_from = tmp_path / "old"
    shutil.copytree(dataset.parent, moved_from)
    data = moved_from / "data.yaml"
    data.write_text(dataset.read_text().replace(str(dataset.parent), str(moved_from)))
    stopped = train_then_stop(daemon, "moved", data, epochs=6)
    before = daemon.attempts("moved")[-1]

    moved_to = tmp_path / "new"
    os.rename(moved_from, moved_to)
    new_data = moved_to / "data.yaml"
    new_data.write_text(new_data.read_text().replace(str(moved_from), str(moved_to)))
    assert ctl(daemon.home, "start", "moved").returncode == 0
    held = daemon.wait_state("moved", "held", timeout=60)
    assert str(moved_from) in held.state_reason and "edit moved data=" in held.state_reason
    assert len(daemon.attempts("moved")) == 1                            # nothing spawned, no budget used

    refused = ctl(daemon.home, "edit", "moved", "lr0=0.5")
    assert refused.returncode == 2 and "cannot change under a resume" in refused.stderr
    needs_force = ctl(daemon.home, "edit", "moved", "batch=4")
    assert needs_force.returncode == 2 and "--force" in needs_force.stderr
    done = ctl(daemon.home, "edit", "moved", f"data={new_data}")
    assert done.returncode == 0, done.stderr
    job = daemon.wait_state("moved", "completed", timeout=300)  # the hold lifts by itself after the edit
    resumed = daemon.attempts("moved")[1]
    assert resumed.resumed_from and resumed.epochs_before == before.epochs_after == stopped.epochs_done
    assert results_csv.read_epochs(Path(job.run_dir) / "results.csv") == [1, 2, 3, 4, 5, 6]
    edits = [e.reason for e in daemon.events("moved") if e.kind == "edit"]
    assert any(str(data) in r and str(new_data) in r for r in edits), edits
    log = (daemon.home / "jobs" / "moved" / "train.log").read_text()
    assert str(moved_to) in log                                          # the resumed run read the new dataset


def test_extend_a_completed_job_trains_on_with_every_epoch_once(daemon, dataset):
    from supervisor import results_csv
    from supervisor.probes.checkpoint import CkptKind, inspect_checkpoint

    daemon.start()
    wait_socket(daemon)
    daemon.drop(cpu_job("longer", dataset, epochs=2))
    job = daemon.wait_state("longer", "completed")
    assert inspect_checkpoint(Path(job.run_dir) / "weights" / "last.pt").kind is CkptKind.FINISHED
    assert ctl(daemon.home, "extend", "longer", "--epochs", "2").returncode == 5  # not more than trained

    done = ctl(daemon.home, "extend", "longer", "--epochs", "4")
    assert done.returncode == 0, done.stderr
    job = daemon.wait_state("longer", "completed", timeout=300)
    assert job.state_reason == "training finished"
    second = daemon.attempts("longer")[1]
    assert second.epochs_before == 2 and second.resumed_from.endswith("last.pt")
    assert results_csv.read_epochs(Path(job.run_dir) / "results.csv") == [1, 2, 3, 4]
    notes = [e.reason for e in daemon.events("longer")]
    assert any("now trains to 4 epochs (was 2)" in n for n in notes), notes
    assert any("epochs: 2 -> 4 (extend" in n for n in notes), notes
    import json

    from supervisor.observe.plot import plot_run

    hist = json.loads(ctl(daemon.home, "history", "longer", "--json").stdout)
    csv = (Path(job.run_dir) / "results.csv").read_text()
    drawn = plot_run(csv, hist, daemon.home / "longer.png")
    assert drawn.extensions == [(2, 4)] and drawn.epochs == [1, 2, 3, 4]  # the plot marks the extension
