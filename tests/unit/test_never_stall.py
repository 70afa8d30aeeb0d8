"""Nothing a job does can stall supervision (issue 20): the workers, their deadlines, signals by
identity, Slurm trouble as "try again later", and the loop watching its own lag."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from prometheus_client import generate_latest

from supervisor.daemon import preflight
from supervisor.daemon.config import DaemonConfig
from supervisor.daemon.core import Daemon
from supervisor.daemon.loop_lag import LoopLag
from supervisor.daemon.reactor import Reactor
from supervisor.daemon.workers import Workers
from supervisor.jobs.slurm_options import SlurmSettings
from supervisor.observe.metrics import MetricsService
from supervisor.paths import Home
from supervisor.process import launcher, slurm, slurm_watch
from supervisor.process.executor import LocalExecutor
from supervisor.process.slurm import SlurmError
from tests.conftest import wait_for
from tests.unit.test_metrics import samples, value


# -- workers: results as events, deadlines as answers ----------------------------------------
def run_loop_until(reactor: Reactor, workers: Workers, until, timeout: float = 20.0):
    def once():
        due = workers.next_due()
        reactor.wait(0.05 if due is None else min(0.05, due))
        workers.deliver()
        return until()
    return wait_for(once, timeout, interval=0, what="the worker's answer")


def test_a_worker_result_wakes_the_loop_and_comes_back_as_an_event():
    reactor = Reactor()
    workers = Workers(reactor.wake)
    got = []
    assert workers.submit("k", lambda: 42, 10, got.append)
    assert not workers.submit("k", lambda: 43, 10, got.append), "one task per key at a time"
    run_loop_until(reactor, workers, lambda: got)
    assert got[0].ok and got[0].value == 42
    assert not workers.busy("k")
    workers.close()


def test_a_task_past_its_deadline_is_an_answer_never_a_stall():
    reactor = Reactor()
    workers = Workers(reactor.wake)
    release = threading.Event()
    got = []
    workers.submit("hung", lambda: release.wait(60) and "late", 0.2, got.append)
    workers.submit("other", lambda: "fine", 10, got.append)
    run_loop_until(reactor, workers, lambda: len(got) == 2)
    assert {o.value for o in got if o.ok} == {"fine"}
    assert [o.timed_out for o in got if not o.ok] == [True]
    assert workers.busy("hung"), "a key whose thread still runs takes no second task (no pile of hung threads)"
    release.set()
    wait_for(lambda: not workers.busy("hung"), 10, what="the key to be free once the thread returned")
    assert len(got) == 2, "the late result is dropped, not delivered"
    workers.close()


# -- preflight: a FIFO is never opened for reading ------------------------------------------
def test_a_fifo_dataset_is_answered_at_once_not_after_the_deadline(tmp_path):
    fifo = tmp_path / "data.yaml"
    os.mkfifo(fifo)
    # Before: the check opened the FIFO, waited for a writer, and answered "did not answer" at the deadline.
    result = preflight.check(str(fifo), None, "j", deadline_s=30)
    assert not result.ok
    assert "is not a readable plain file" in result.reason and str(fifo) in result.reason


def test_a_fifo_model_is_not_opened_either(tmp_path):
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {tmp_path}\ntrain: {tmp_path}\nval: {tmp_path}\n")
    model = tmp_path / "model.pt"
    os.mkfifo(model)
    result = preflight.check(str(data), str(model), "j", deadline_s=30)
    assert "model file" in result.reason and "not a readable plain file" in result.reason


# -- signals by identity -----------------------------------------------------------------------
def test_a_pid_reused_by_another_process_is_never_signalled():
    # A recorded attempt (pid + start time) whose pid now names another process: _escalate_kill's
    # path for a re-adopted attempt used to SIGKILL it by number.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        started = launcher.process_start_time(other.pid)
        r, w = os.pipe()
        os.close(w)
        recorded = launcher.Child(job="j", pid=other.pid, start_time=started - 3600.0, pidfd=r)
        executor = LocalExecutor(f"test-{os.getpid()}-reuse")
        assert executor.kill_job_now("j", recorded) == []
        assert executor.signal_job("j", recorded, 15) == []
        assert other.poll() is None, "the process that reused the pid was signalled"
        os.close(r)
    finally:
        other.kill()
        other.wait()


def test_the_attempt_itself_is_signalled_through_its_pidfd():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    child = launcher.identify("j", proc.pid)
    assert child is not None
    try:
        assert LocalExecutor(f"test-{os.getpid()}-pidfd").kill_job_now("j", child) == []
        assert proc.wait(10) == -9
    finally:
        child.close()


def test_adopt_refuses_a_pid_whose_start_time_differs():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        assert launcher.adopt("j", proc.pid, launcher.process_start_time(proc.pid) - 100) is None
    finally:
        proc.kill()
        proc.wait()


# -- Slurm: only a state Slurm reports ends an attempt -------------------------------------------
@pytest.fixture
def watch(monkeypatch):
    monkeypatch.setattr(slurm_watch.SlurmWatch, "_poll_loop", lambda self: None)  # polled by the test
    return slurm_watch.SlurmWatch(lambda: SlurmSettings())


def test_an_unknown_squeue_error_leaves_the_attempt_running_with_a_warning(watch, monkeypatch):
    child = watch.track("j", "41")

    def squeue(argv, timeout, **kwargs):
        raise SlurmError("squeue: error: slurm_receive_msgs: [[ctl]:6817] failed: Unexpected message received")
    monkeypatch.setattr(slurm, "run", squeue)
    for _ in range(slurm_watch.MISSING_POLLS + 3):
        watch.poll_once()
    assert not child.ended, "an answer the daemon does not understand ended the attempt"
    assert "does not understand" in watch.warning
    child.close()


def test_an_unknown_scontrol_error_leaves_the_attempt_running(watch, monkeypatch):
    child = watch.track("j", "42")

    def commands(argv, timeout, **kwargs):
        if argv[0] == "squeue":
            return ""  # not listed any more: asked in detail
        raise SlurmError(f"{argv[0]}: error: something new went wrong")
    monkeypatch.setattr(slurm, "run", commands)
    for _ in range(slurm_watch.MISSING_POLLS + 3):
        watch.poll_once()
    assert not child.ended and "scontrol" in watch.warning
    child.close()


def test_a_job_slurm_says_it_does_not_know_ends_and_the_warning_clears(watch, monkeypatch):
    child = watch.track("j", "43")
    watch.warning = "an earlier problem"

    def commands(argv, timeout, **kwargs):
        raise SlurmError(f"{argv[0]}: error: Invalid job id specified")
    monkeypatch.setattr(slurm, "run", commands)
    for _ in range(slurm_watch.MISSING_POLLS):
        watch.poll_once()
    assert child.ended and child.final is None
    assert watch.warning is None
    child.close()


# -- the daemon watches itself ---------------------------------------------------------------
class Log:
    def __init__(self):
        self.warnings = []

    def warning(self, message, **fields):
        self.warnings.append((message, fields))


def test_loop_lag_is_the_longest_busy_time_in_the_last_minute_and_warns_past_one_second():
    now = [1000.0]
    log = Log()
    lag = LoopLag(log, clock=lambda: now[0])
    lag.note("events", 0.3)
    lag.note("housekeeping", 1.5)
    assert lag.longest() == 1.5
    assert [f["what"] for _, f in log.warnings] == ["housekeeping"]
    now[0] += 61
    lag.note("events", 0.1)
    assert lag.longest() == 0.1


def test_the_loop_lag_gauge_is_on_metrics(tmp_path):
    daemon = Daemon(Home(tmp_path / "home"), DaemonConfig())
    try:
        with daemon.loop_lag.busy("a test"):
            time.sleep(0.05)  # the work being measured, not synchronisation
        got = samples(generate_latest(MetricsService(daemon).registry).decode())
        assert value(got, "yolo_supervisor_loop_lag_seconds") >= 0.05
    finally:
        daemon.store.close()
