"""The daemon's own files changing under it (issue 10, reliability): state.db deleted or damaged,
the drop directory removed and made again. Real daemon processes, real files."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import pytest

from tests.conftest import DaemonProcess, ctl, wait_for, wait_socket
from tests.e2e.test_bad_input import fake_job, submit


def test_a_deleted_state_database_is_written_back_and_survives_a_restart(fake_daemon, tmp_path):
    fake_daemon.start()
    wait_socket(fake_daemon)
    submit(fake_daemon, tmp_path, fake_job("kept"))
    pid = fake_daemon.wait_state("kept", "running", timeout=60).pid
    db = fake_daemon.home / "state.db"
    for leftover in (db, db.with_name("state.db-wal"), db.with_name("state.db-shm")):
        leftover.unlink(missing_ok=True)  # `rm state.db*` while the daemon runs
    wait_for(lambda: db.exists() and fake_daemon.job("kept") is not None, 30, what="state.db written back")
    assert "state database deleted while the daemon ran" in fake_daemon.log.read_text()
    assert ctl(fake_daemon.home, "stop", "--wait", "--timeout", "30", "kept").returncode == 0  # still writes
    assert ctl(fake_daemon.home, "start", "kept").returncode == 0
    pid = fake_daemon.wait_state("kept", "running", timeout=60).pid
    fake_daemon.proc.send_signal(signal.SIGKILL)
    fake_daemon.proc.wait(30)
    fake_daemon.start()  # the killed daemon's socket file is still there: wait for an answer
    listing = wait_for(lambda: (r := ctl(fake_daemon.home, "status")).returncode == 0 and r, 30, what="status")
    assert "kept" in listing.stdout
    job = fake_daemon.wait_state("kept", "running", timeout=30)
    assert job.pid == pid and any(e.kind == "adopted" for e in fake_daemon.events("kept"))


def test_a_damaged_state_database_stops_start_up_with_a_recovery_hint(fake_daemon, tmp_path):
    fake_daemon.start()
    wait_socket(fake_daemon)
    submit(fake_daemon, tmp_path, fake_job("before"))
    backup = fake_daemon.home / "state.db.backup"
    wait_for(backup.exists, 30, what="a backup of the state database")
    fake_daemon.stop()
    db = fake_daemon.home / "state.db"
    for leftover in (db.with_name("state.db-wal"), db.with_name("state.db-shm")):
        leftover.unlink(missing_ok=True)
    db.write_bytes(b"this is not an SQLite database" * 100)
    done = subprocess.run([sys.executable, "-m", "supervisor.daemon.main", "--home", str(fake_daemon.home)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 78, done.stderr
    assert "Traceback" not in done.stderr and "damaged" in done.stderr and "Recovery" in done.stderr
    assert str(backup) in done.stderr
    assert db.read_bytes().startswith(b"this is not")  # left exactly as it was

    shutil.move(db, db.with_name("state.db.damaged"))  # what the hint says
    shutil.copy(backup, db)
    fake_daemon.start()
    wait_socket(fake_daemon)
    assert "before" in ctl(fake_daemon.home, "status").stdout


def test_a_drop_directory_removed_and_made_again_is_watched_again(fake_daemon):
    fake_daemon.start()
    wait_socket(fake_daemon)
    # The socket is made before the drop directory is watched: a folder replaced before that is the
    # one the watch starts on (CI, under load), and there is nothing to notice.
    wait_for(lambda: "watching drop directory" in fake_daemon.log.read_text(), 30, what="the drop directory watched")
    inbox = fake_daemon.home / "inbox"
    shutil.rmtree(inbox)
    inbox.mkdir()
    wait_for(lambda: "drop directory was replaced" in fake_daemon.log.read_text(), 30, what="a re-watch")
    fake_daemon.drop(fake_job("again"))
    fake_daemon.wait_state("again", {"starting", "running"}, timeout=30)
    shutil.rmtree(inbox)  # removed for good: made again by the daemon
    wait_for(inbox.is_dir, 30, what="the drop directory made again")
    fake_daemon.drop(fake_job("third"))
    fake_daemon.wait_state("third", {"starting", "running"}, timeout=30)
