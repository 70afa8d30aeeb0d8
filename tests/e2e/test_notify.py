"""Notifications and the event stream end to end.

Real targets on loopback (an HTTP server that records apprise's json:// posts, a socket that
never answers); a real daemon subprocess with its real socket and CLI; the real training child
for the missing dataset and for the kill-and-resume stream; the test-only fake trainer or a
daemon in this process with the fake NVML probe elsewhere.
"""

import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from supervisor.daemon.config import DaemonConfig
from supervisor.daemon.core import Daemon
from supervisor.observe.notify import NotifySettings, fingerprint
from supervisor.paths import Home
from supervisor.probes.gpu import FakeGpuProbe
from tests.conftest import FAKE_DATA, cpu_job, ctl, kill_job_processes, wait_for, wait_socket
from tests.e2e.notify_targets import SECRET, Receiver, Silent


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def write_config(home: Path, **values) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    path.chmod(0o644)
    return path


def use_fake_trainer(monkeypatch, tmp_path: Path, script: str) -> None:
    path = tmp_path / "trainer.py"
    path.write_text(script)
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(path))


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def about(messages, job):
    """The notifications about ``job`` (titles are ``[host] JOB: EVENT``)."""
    return [m for m in messages if f"] {job}: " in m["title"]]


# -- failed, with the cause; URLs stay secret ------------------------------------------------
def test_a_config_error_notifies_once_with_the_cause_and_the_url_stays_secret(daemon, receiver, tmp_path):
    config = write_config(daemon.home, notify={"urls": [receiver.url()]})
    daemon.start()
    home = wait_socket(daemon).parent
    assert stat.S_IMODE(config.stat().st_mode) == 0o600, "config.yaml with notification URLs is made private"

    empty = tmp_path / "empty-dataset"      # its paths exist (the preflight passes), it has no images
    (empty / "images").mkdir(parents=True)
    (empty / "data.yaml").write_text(f"path: {empty}\ntrain: images\nval: images\nnames: {{0: a}}\n")
    daemon.drop(cpu_job("nodata", empty / "data.yaml", epochs=2))  # the real child: Ultralytics
    job = daemon.wait_state("nodata", "failed", timeout=300)
    assert job.last_cause == "config_error"
    [failed] = receiver.wait(lambda m: about(m, "nodata"), what="the failure notification")
    assert failed["title"].endswith("nodata: failed") and failed["type"] == "failure"
    body = failed["message"]
    assert "config_error" in body and str(empty) in body, body  # the cause and the exception's detail
    assert "epochs 0/2" in body and "restarts 0" in body and "goodput" in body
    assert "yolo-supervisorctl history nodata" in body

    # A test message goes through the same queue to the same target, after anything queued
    # before it: once it arrived, a second failure notification would have too.
    out = ok(ctl(home, "notify-test"))
    assert out.strip() == f"config.yaml notify.urls[0] (json://…, #{fingerprint(receiver.url())}): ok"
    messages = receiver.wait(lambda m: any("test notification" in x["title"] for x in m), what="the test")
    assert len(about(messages, "nodata")) == 1, [m["title"] for m in messages]
    assert all(path == f"/{SECRET}" for path in receiver.paths)

    shown = [daemon.log.read_text(), out,
             ok(ctl(home, "status", "--json")), ok(ctl(home, "history", "--json", "nodata")),
             ok(ctl(home, "events", "--json")), ok(ctl(home, "history", "nodata"))]
    assert not [s for s in shown if SECRET in s], "a notification URL was shown"


def test_a_job_file_with_a_bad_notification_url_is_refused_without_echoing_it(fake_daemon, tmp_path):
    fake_daemon.start()
    home = wait_socket(fake_daemon).parent
    spec = cpu_job("badurl", FAKE_DATA, notify={"urls": [f"nosuch://{SECRET}"]})
    path = tmp_path / "badurl.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = ctl(home, "submit", str(path))
    assert result.returncode == 2 and "notify.urls: [0]: not a notification URL" in result.stderr
    assert SECRET not in result.stderr + fake_daemon.log.read_text()


def test_notification_settings_apply_on_reload(fake_daemon, receiver):
    fake_daemon.start()
    home = wait_socket(fake_daemon).parent
    result = ctl(home, "notify-test")
    assert result.returncode == 5 and "no notification targets: set notify.urls in config.yaml" in result.stderr
    config = write_config(home, notify={"urls": [receiver.url()]})
    fake_daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded" in fake_daemon.log.read_text(), 30, what="the reload")
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert ok(ctl(home, "notify-test")).endswith("): ok\n")
    assert receiver.wait(lambda m: m, what="the test message")[0]["type"] == "info"


# -- held, with the reason (fake NVML) -----------------------------------------------------------
RUN_FOREVER = """
import time
reporter.state["first_batch_at"] = time.time()
while True:
    reporter.beat(phase="training", epoch=1, batch=1, batches=10)
    time.sleep(0.05)
"""


@pytest.fixture
def local(tmp_path, monkeypatch):
    """A daemon in this process running a scripted fake trainer; ``make(script, probe, config)``."""
    made = []

    def make(script: str, probe=None, config=None) -> Daemon:
        use_fake_trainer(monkeypatch, tmp_path, script)
        d = Daemon(Home(tmp_path / "home"), config, gpu_probe=probe)
        d.start()
        made.append(d)
        return d

    yield make
    for d in made:
        for name in list(d.running):
            kill_job_processes(name)
        d.shutdown()


def pump(d: Daemon, until, timeout=60.0, what="condition"):
    """Run the daemon's loop until ``until()`` holds."""
    def once():
        d.housekeeping()
        d.step(0.05)
        return until()
    return wait_for(once, timeout, interval=0, what=what)


def gpu_job(name, **extra) -> str:
    spec = {"name": name, "train": {"model": "yolov8n.yaml", "data": "d.yaml", "epochs": 3, "device": "0"},
            "restart": {"backoff": {"initial": 0, "max": 0, "factor": 1}}}
    spec.update(extra)
    return yaml.safe_dump(spec)


def test_a_held_job_notifies_its_own_target_with_the_reason(local, receiver):
    probe = FakeGpuProbe(1)
    probe.set_ecc(0, 3)
    # No URL in the daemon's config: the job file's only, on this host, which the admin allows.
    d = local(RUN_FOREVER, probe, DaemonConfig(notify=NotifySettings(allow_hosts=["127.0.0.1"])))
    d.submit(gpu_job("quiet", notify={"urls": [receiver.url()], "on": ["failed"]}), source="test")
    pump(d, lambda: d.store.get_job("quiet").state == "held", what="quiet held")
    d.submit(gpu_job("loud", notify={"urls": [receiver.url()]}), source="test")
    pump(d, lambda: d.store.get_job("loud").state == "held", what="loud held")

    [held] = receiver.wait(lambda m: m, what="the hold notification")
    assert held["title"].endswith("loud: held") and held["type"] == "warning"
    assert "devices unhealthy" in held["message"] and "uncorrectable ECC" in held["message"], held["message"]
    assert receiver.received() == [held], "'quiet' asked for failures only (its hold came first, same queue)"


# -- completed ----------------------------------------------------------------------------------
FINISH_AT_ONCE = """
import time
reporter.state["first_batch_at"] = time.time()
reporter.beat(force=True, phase="training", epoch=1, batch=1, batches=1)
"""


def test_a_completed_job_notifies(fake_daemon, receiver, monkeypatch, tmp_path):
    use_fake_trainer(monkeypatch, tmp_path, FINISH_AT_ONCE)
    write_config(fake_daemon.home, notify={"urls": [receiver.url()]})
    fake_daemon.start()
    fake_daemon.drop(cpu_job("quick", FAKE_DATA, epochs=2))
    fake_daemon.wait_state("quick", "completed", timeout=60)
    [done] = receiver.wait(lambda m: m, what="the completion notification")
    assert done["title"].endswith("quick: completed") and done["type"] == "success"
    assert "quick completed: training finished" in done["message"] and "epochs 2/2" in done["message"]


# -- a target that never answers ------------------------------------------------------------------
CRASH_FIRST = """
import sys, time
reporter.state["first_batch_at"] = time.time()
reporter.beat(force=True, phase="training", epoch=1, batch=1, batches=10)
if plan["attempt"] == 1:
    reporter.exit_record(1, exception="RuntimeError", message="boom")
    sys.exit(1)
while True:
    reporter.beat(phase="training", epoch=1, batch=1, batches=10)
    time.sleep(0.05)
"""


def test_a_target_that_never_answers_does_not_delay_the_next_launch(fake_daemon, monkeypatch, tmp_path):
    silent = Silent()
    use_fake_trainer(monkeypatch, tmp_path, CRASH_FIRST)
    timeout_s = 30
    write_config(fake_daemon.home, tick_s=0.2,
                 notify={"urls": [silent.url()], "on": ["restarted", "failed"], "timeout_s": timeout_s,
                         "retries": 0})
    try:
        fake_daemon.start()
        home = wait_socket(fake_daemon).parent
        spec = cpu_job("hasty", FAKE_DATA)
        spec["restart"] = {"backoff": {"initial": 0, "max": 0, "factor": 1}}
        fake_daemon.drop(spec)
        fake_daemon.wait_state("hasty", "running", timeout=60)
        wait_for(lambda: len(fake_daemon.attempts("hasty")) == 2, 60, what="the second attempt")
        first, second = fake_daemon.attempts("hasty")
        assert first.cause == "crashed"
        wait_for(lambda: silent.accepted_at, 30, what="the notification's connection to the silent target")
        gap = second.started_at - first.ended_at
        print(f"\nattempt 1 end -> attempt 2 start: {gap:.3f}s while the notification waits up to {timeout_s}s")
        assert gap < 2.0, f"the relaunch waited {gap:.1f}s"
        assert len(silent.accepted_at) == 1  # retries: 0
        t0 = time.monotonic()
        ok(ctl(home, "status"))
        assert time.monotonic() - t0 < 10, "status answered while the send hangs"
        # ... and the send is still hanging: the daemon did not give up early to launch
        assert time.time() - silent.accepted_at[0] < timeout_s
    finally:
        silent.close()


# -- a crash loop, with restarted on, is rate-limited -------------------------------------------------
CRASH_ALWAYS = """
import sys, time
reporter.state["first_batch_at"] = time.time()
reporter.beat(force=True, phase="training", epoch=1, batch=1, batches=10)
reporter.exit_record(1, exception="RuntimeError", message="boom")
sys.exit(1)
"""


def test_a_crash_loop_with_restarted_on_is_rate_limited(local, receiver):
    config = DaemonConfig(notify=NotifySettings(urls=[receiver.url()], on=["restarted", "failed"],
                                                restart_rate={"count": 2, "per_s": 3600}))
    d = local(CRASH_ALWAYS, config=config)
    spec = yaml.safe_load(gpu_job("loop"))
    spec["train"]["device"] = "cpu"
    spec["restart"].update(max_restarts=5, max_no_progress=20)
    d.submit(yaml.safe_dump(spec), source="test")
    pump(d, lambda: d.store.get_job("loop").state == "failed", what="the crash loop to fail")
    assert len(d.store.attempts("loop")) == 6  # 5 restarts

    messages = receiver.wait(lambda m: any(x["title"].endswith("loop: failed") for x in m), what="failed")
    titles = [m["title"].rsplit(": ", 1)[-1] for m in messages]
    assert titles == ["restarted", "restarted", "failed"], titles
    assert "crashed" in messages[0]["message"] and "boom" in messages[0]["message"]
    assert "3 restarted/stalled notification(s) for this job held back" in messages[-1]["message"]


# -- stalled -------------------------------------------------------------------------------------------
HANG_FIRST = """
import time
reporter.state["first_batch_at"] = time.time()
reporter.beat(force=True, phase="training", epoch=1, batch=3, batches=10)
while plan["attempt"] == 1:
    time.sleep(1)  # hung: no heartbeat
while True:
    reporter.beat(phase="training", epoch=1, batch=1, batches=10)
    time.sleep(0.05)
"""


def test_a_hung_attempt_notifies_stalled_when_asked_and_not_restarted(local, receiver):
    config = DaemonConfig(notify=NotifySettings(urls=[receiver.url()], on=["stalled", "failed"]))
    d = local(HANG_FIRST, config=config)
    spec = yaml.safe_load(gpu_job("hung"))
    spec["train"]["device"] = "cpu"
    spec["health"] = {"stall_timeout": 1.5, "stop_grace": 1}
    d.submit(yaml.safe_dump(spec), source="test")
    pump(d, lambda: len(d.store.attempts("hung")) == 2, what="the restart after the stall")
    [stalled] = receiver.wait(lambda m: m, what="the stall notification")
    assert stalled["title"].endswith("hung: stalled"), stalled["title"]
    assert "attempt 1 ended: stalled: no progress for" in stalled["message"], stalled["message"]
    assert "batch 3/10" in stalled["message"] or "epoch 1" in stalled["message"]
    d.notifications.test(None)[0][1].result(timeout=30)  # same queue: anything before it has arrived
    titles = [m["title"] for m in receiver.received()]
    assert len(titles) == 2 and titles[1].endswith("test notification"), "stalled only: no restarted"


# -- events -f -----------------------------------------------------------------------------------------
def test_events_follow_shows_a_kill_and_the_resume_as_they_happen(daemon, dataset):
    daemon.start()
    home = wait_socket(daemon).parent
    follower = subprocess.Popen([sys.executable, "-m", "supervisor.control.cli", "--home", str(home),
                                 "events", "-f"], stdout=subprocess.PIPE, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in follower.stdout], daemon=True).start()
    seen: list[str] = []

    def expect(text, timeout=300):
        def found():
            while True:
                try:
                    line = lines.get_nowait()
                except queue.Empty:
                    return None
                seen.append(line)
                if text in line:
                    return line
        try:
            return wait_for(found, timeout, interval=0.1, what=f"an event line with {text!r}")
        except AssertionError as err:
            raise AssertionError(f"{err}; the stream so far:\n{''.join(seen)}") from None

    try:
        spec = cpu_job("live", dataset, epochs=5)
        spec["train"]["batch"] = 2  # 8 batches an epoch: the kill lands well before the end
        daemon.drop(spec)
        expect("live  submitted")
        snapshot = expect("live  snapshot: verified copy of epoch ")
        saved = int(snapshot.split("verified copy of epoch ")[1].split()[0])
        os.kill(daemon.job("live").pid, signal.SIGKILL)
        killed = expect("live  exit: attempt 1: killed: SIGKILL", timeout=60)
        resumed = expect("live  state backoff->starting: attempt 2: resume from", timeout=120)
        assert int(resumed.rsplit("(epoch ", 1)[1].rstrip(")\n")) >= saved, resumed
        assert follower.poll() is None, "still following"
        assert seen.index(killed) < seen.index(resumed)

        rows = [json.loads(ln) for ln in ok(ctl(home, "events", "--json", "live")).splitlines()]
        assert {"id", "job", "at", "kind", "reason", "from_state", "to_state", "actor", "data"} <= rows[0].keys()
        assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
        assert any(r["kind"] == "exit" and "killed" in r["reason"] for r in rows)
        assert ok(ctl(home, "events", "-n", "2", "live")).count("\n") == 2
    finally:
        follower.kill()
        follower.wait()
