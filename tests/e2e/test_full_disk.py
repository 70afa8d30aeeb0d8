"""A full disk under the daemon's home: clear errors, nothing lost, the daemon keeps serving.

Real daemon, real socket, real SQLite and a real ENOSPC from a small tmpfs; training is
the fake trainer (training itself is not the point here).
"""

from __future__ import annotations

import os
import signal
import time

import yaml

from tests.conftest import FAKE_TRAINER, DaemonProcess, ctl, fill_disk, kill_job_processes, wait_for, wait_socket


def spec(name: str) -> dict:
    return {"name": name, "train": {"model": "yolov8n.yaml", "data": "unused.yaml", "epochs": 5},
            "restart": {"backoff": {"initial": 0, "max": 0, "factor": 1}}}


def log_has(d: DaemonProcess, text: str) -> bool:
    d.assert_alive()
    return text in d.log.read_text()


def test_a_full_disk_loses_no_job_no_file_and_no_attempt_end(small_disk, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(FAKE_TRAINER))
    d = DaemonProcess(small_disk / "home")
    d.log = tmp_path / "daemon.log"  # outside the full disk: the test must see what the daemon says
    try:
        d.start()
        wait_socket(d)
        (tmp_path / "j1.yaml").write_text(yaml.safe_dump(spec("j1")))
        (tmp_path / "j2.yaml").write_text(yaml.safe_dump(spec("j2")))
        assert ctl(d.home, "submit", str(tmp_path / "j1.yaml")).returncode == 0
        first = d.wait_state("j1", "running", timeout=60)
        staged = d.home / "inbox" / ".j3.yaml.part"  # written now, renamed in once the disk is full
        staged.write_text(yaml.safe_dump(spec("j3")))

        filler = fill_disk(small_disk)

        # a submit is refused with the reason, and nothing of it is kept
        refused = ctl(d.home, "submit", str(tmp_path / "j2.yaml"))
        assert refused.returncode == 1
        assert "database or disk is full" in refused.stderr and "state.db" in refused.stderr
        assert d.job("j2") is None
        # a dropped file stays where its owner put it: neither accepted nor rejected
        os.rename(staged, d.home / "inbox" / "j3.yaml")
        wait_for(lambda: log_has(d, "could not record a dropped job file"), 30, what="the drop file refused")
        assert (d.home / "inbox" / "j3.yaml").exists()
        assert not (d.home / "inbox" / "rejected").exists() or not list((d.home / "inbox" / "rejected").iterdir())
        # the training dies while its end cannot be written
        killed_at = time.time()
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: log_has(d, '"step": "_record_end"'), 30, what="the attempt end refused by the disk")
        status = ctl(d.home, "status", "--json")
        assert status.returncode == 0, status.stderr  # still serving
        assert [j["name"] for j in yaml.safe_load(status.stdout)] == ["j1"]

        filler.unlink()

        # the attempt's end is recorded with its real cause and time, and the job goes on
        def second_attempt_running():
            d.assert_alive()
            job = d.job("j1")
            return job if job.state == "running" and job.attempts == 2 else None
        second = wait_for(second_attempt_running, 60, what="j1's attempt 2 running")
        one, two = d.attempts("j1")
        assert (one.cause, one.signal) == ("killed", signal.SIGKILL)
        assert abs(one.ended_at - killed_at) < 3  # when it died, not when the disk had room again
        assert two.pid == second.pid and two.ended_at is None
        kinds = [e.kind for e in d.events("j1")]
        assert kinds.count("exit") == 1
        # the dropped file is taken on its retry; the refused submit now works
        d.wait_state("j3", ("starting", "running"), timeout=60)
        assert (d.home / "inbox" / "accepted" / "j3.yaml").exists()
        assert ctl(d.home, "submit", str(tmp_path / "j2.yaml")).returncode == 0
        d.assert_alive()
    finally:
        d.stop()
        for name in ("j1", "j2", "j3"):
            kill_job_processes(name)
    # here, while the small disk holding its database is still mounted (the check after the test is too late)
    assert not d.moves_outside_the_table(), d.moves_outside_the_table()


def test_a_vault_copy_that_does_not_fit_leaves_no_partial_file(small_disk, real_checkpoints):
    from supervisor.probes.vault import CheckpointVault

    vault = CheckpointVault(small_disk / "vault")
    fill_disk(small_disk)
    try:
        vault.snapshot(real_checkpoints["resumable1"])
    except OSError as exc:
        assert exc.errno == 28  # ENOSPC
    else:
        raise AssertionError("a 30 MB copy fitted on a full 16 MiB disk")
    assert [p.name for p in (small_disk / "vault").iterdir() if not p.name.startswith(".last")] == []
