"""Defects found in review (issue 10, item 12), each on a real Daemon object over a temp home."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from supervisor.control import handlers
from supervisor.control.peer import Peer
from supervisor.control.protocol import RequestError
from supervisor.control.requests import JobRequest, RemoveRequest
from supervisor.daemon.config import load_config
from supervisor.daemon.core import CommandError, Daemon, IllegalTransition
from supervisor.jobs.machine import On
from supervisor.process import launcher
from supervisor.store import StoreError
from tests.conftest import FAKE_DATA, FAKE_TRAINER, in_process_daemon, settle

ROOT = Peer(pid=1, uid=0, gid=0)
SPEC = yaml.safe_dump({"name": "j", "train": {"model": "yolov8n.yaml", "data": str(FAKE_DATA),
                                              "epochs": 2, "device": "cpu"}})


@pytest.fixture
def daemon(tmp_path):
    yield from in_process_daemon(tmp_path)


def add(daemon: Daemon, name: str = "j", state: str = "queued", **fields) -> None:
    daemon.store.add_job(name, SPEC.replace("name: j", f"name: {name}"), state, source="test")
    daemon.home.ensure_job(name)
    if fields:
        daemon.store.update_job(name, **fields)


def state_events(daemon: Daemon, name: str = "j") -> list[tuple[str, str]]:
    return [(e.from_state, e.to_state) for e in daemon.store.events(name) if e.kind == "state"]


# -- the transition table is the truth ------------------------------------------------------
def test_reconcile_requeues_a_running_job_without_an_attempt_instead_of_dying(daemon):
    add(daemon, state="running")  # e.g. killed between the job's move and the attempt row of an old version
    daemon.reconcile()  # used to raise CommandError out of start(), outside the loop's guard
    assert daemon.store.get_job("j").state == "queued"
    assert state_events(daemon) == [("running", "queued")]


def test_a_launch_that_fails_on_the_disk_backs_off_through_the_table_with_an_event(daemon, monkeypatch):
    add(daemon)

    def full_disk(name, actor=None, gpus=()):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(daemon.launches, "launch", full_disk)
    daemon.start_due_jobs()
    job = daemon.store.get_job("j")
    assert job.state == "backoff" and "No space left" in job.state_reason
    assert state_events(daemon) == [("queued", "backoff")]


def test_a_queued_job_whose_checkpoint_is_finished_completes(daemon, real_checkpoints, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "weights").mkdir(parents=True)
    shutil.copyfile(real_checkpoints["finished"], run_dir / "weights" / "last.pt")
    add(daemon, run_dir=str(run_dir))
    daemon.launch("j")
    settle(daemon)
    assert daemon.store.get_job("j").state == "completed"
    assert state_events(daemon) == [("queued", "completed")]


def test_an_illegal_move_is_an_internal_error_not_the_users(daemon, table_check):
    add(daemon, state="completed")
    with pytest.raises(IllegalTransition, match="internal error"):
        daemon.transition("j", On.ATTEMPT_STARTED, "a bug")
    table_check.planted("j: completed on attempt_started (a bug)")  # seen by the check after every test, too


# -- logging and configuration ----------------------------------------------------------------
def test_json_logs_keep_the_traceback():
    from supervisor.observe.logging import configure, get_logger

    out = io.StringIO()
    configure("info", stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        get_logger().exception("step failed")
    line = json.loads(out.getvalue().splitlines()[-1])
    assert "Traceback" in line["exception"] and "ValueError: boom" in line["exception"]


def test_an_unknown_log_level_is_refused_like_any_other_field(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("log_level: loud\n")
    with pytest.raises(ValueError, match="log_level"):
        load_config(config)
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text("log_level: loud\n")
    done = subprocess.run([sys.executable, "-m", "supervisor.daemon.main", "--home", str(home)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "log_level" in done.stderr


# -- control requests -------------------------------------------------------------------------
def test_a_request_that_timed_out_is_dropped_not_run_later(daemon):
    ran = []
    with pytest.raises(TimeoutError, match="dropped"):
        daemon.call(lambda: ran.append(1), timeout=0.1)  # no loop is running
    daemon.step(0)
    assert ran == []


def removing(daemon):
    """``remove --purge`` as the control server runs it: the handler on the loop, the wait after."""
    answer = handlers.remove(daemon, RemoveRequest(name="j", purge=True), ROOT)
    settle(daemon)
    return answer


def test_remove_purge_reports_a_folder_it_could_not_delete(daemon):
    if os.geteuid() != 0 or not shutil.which("chattr"):
        pytest.skip("needs root and chattr to make a file that cannot be deleted")
    add(daemon, state="stopped")
    stuck = daemon.home.job_dir("j") / "stuck"
    stuck.write_text("x")
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable attribute")
    try:
        with pytest.raises(RequestError, match="could not delete .*stuck.*the job is kept"):
            removing(daemon).wait()
        assert daemon.store.get_job("j") is not None
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], capture_output=True)
    assert removing(daemon).wait()["purged"] is True
    assert not daemon.home.job_dir("j").exists()


def test_stopping_a_job_that_waits_for_gpu_memory_ends_the_wait(daemon):
    add(daemon)
    daemon.health._waiting_since["j"] = 0.0  # waiting for the last attempt's memory since long ago
    handlers.stop(daemon, JobRequest(name="j"), ROOT)
    assert "j" not in daemon.health._waiting_since  # a later start waits afresh


# -- an attempt that cannot be recorded ---------------------------------------------------------
def pidfds() -> int:
    """The pidfds this process holds (the count of all descriptors moves with the pool's threads)."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]"
        except OSError:
            pass
    return found


def test_an_attempt_that_cannot_be_recorded_is_killed_and_leaks_no_pidfd(daemon, monkeypatch):
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(FAKE_TRAINER))
    add(daemon)

    def full(*args, **kwargs):
        raise StoreError("cannot write the state database: database or disk is full")
    monkeypatch.setattr(daemon.store, "start_attempt", full)
    fds = pidfds()
    daemon.start_due_jobs()
    settle(daemon)
    settle(daemon)  # the kill of the unrecorded attempt is a worker task of its own
    assert daemon.store.get_job("j").state == "backoff"
    assert launcher.job_processes("j", daemon_id=daemon.daemon_id) == []
    assert pidfds() == fds
    assert "j" not in daemon.running


def test_unit_tests_do_not_need_pillow():
    code = "import sys; sys.modules['PIL'] = None; import tests.conftest"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr


def test_the_check_of_recorded_moves_sees_one_outside_the_table(tmp_path):
    from tests.conftest import DaemonProcess

    d = DaemonProcess(tmp_path / "home", table_check=False)  # the bad move is planted: not checked after
    d.home.mkdir(parents=True)
    store = d.store()
    store.add_job("j", SPEC, "completed")
    store.add_event("j", "state", "a bug", from_state="completed", to_state="running", data={"on": "first_batch"})
    store.add_event("j", "state", "wrong end", from_state="starting", to_state="failed", data={"on": "first_batch"})
    store.add_event("j", "state", "unnamed", from_state="queued", to_state="starting")
    store.add_event("j", "state", "fine", from_state="queued", to_state="starting", data={"on": "attempt_started"})
    store.close()
    assert d.moves_outside_the_table() == ["j: completed->running on first_batch (a bug)",
                                           "j: starting->failed on first_batch (wrong end)",
                                           "j: queued->starting on None (unnamed)"]


# -- launches on a worker (issue 20) ---------------------------------------------------------
def test_a_job_whose_launch_is_in_flight_says_so_and_a_stop_meanwhile_leaves_nothing_running(daemon, monkeypatch):
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(FAKE_TRAINER))
    add(daemon)
    daemon.start_due_jobs()  # the launch's files, strays and spawn go to a worker; the loop goes on
    job = daemon.store.get_job("j")
    assert job.state == "queued" and job.state_reason.startswith("starting: checking")
    with pytest.raises(CommandError, match="cannot remove"):  # dispatch answers it as WRONG_STATE
        handlers.remove(daemon, RemoveRequest(name="j"), ROOT)
    handlers.stop(daemon, JobRequest(name="j"), ROOT)
    settle(daemon)
    settle(daemon)  # the kill of the attempt nobody will watch is a worker task of its own
    assert daemon.store.get_job("j").state == "stopped"
    assert "j" not in daemon.running and daemon.store.attempts("j") == []
    assert launcher.job_processes("j", daemon_id=daemon.daemon_id) == []
