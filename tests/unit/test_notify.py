"""Notifications: the pure parts as tables, the store's commit-time listeners, settings, and the
sender's retries and timeout against real loopback targets."""

import concurrent.futures
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from supervisor.control.cli import event_line
from supervisor.daemon.config import load_config
from supervisor.jobs.spec import SpecError, parse_spec_text
from supervisor.observe.notify import (JobNotify, Notice, NotifySettings, Outgoing, RateLimit, Target,
                                       TargetSender, build_notice, fingerprint, notify_event, redact,
                                       targets_for)
from supervisor.observe.logging import get_logger
from supervisor.store import AttemptRecord, JobRecord, Store
from tests.e2e.notify_targets import SECRET, Receiver, Silent


@pytest.mark.parametrize("kind, old, new, cause, expected", [
    ("state", "starting", "failed", None, "failed"),
    ("state", "queued", "held", None, "held"),
    ("state", "running", "held", None, "held"),
    ("state", "running", "completed", None, "completed"),
    ("state", "running", "backoff", None, "restarted"),
    ("state", "starting", "backoff", None, "restarted"),
    ("state", "stopping", "backoff", None, "restarted"),   # after a stall
    ("state", "backoff", "starting", None, None),
    ("state", "running", "stopping", None, None),
    ("state", "stopping", "stopped", None, None),
    ("state", "held", "queued", None, None),
    ("exit", None, None, "stalled", "stalled"),
    ("exit", None, None, "killed", None),
    ("snapshot", None, None, None, None),
    ("submitted", None, "queued", None, None),
])
def test_which_events_notify(kind, old, new, cause, expected):
    assert notify_event(kind, old, new, cause) == expected


def test_rate_limit_per_job_and_window():
    now = [0.0]
    limit = RateLimit(clock=lambda: now[0])
    assert [limit.allow("a", 2, 60) for _ in range(4)] == [True, True, False, False]
    assert limit.allow("b", 2, 60), "per job"
    assert limit.take_held_back("a") == 2 and limit.take_held_back("a") == 0
    now[0] = 59.9
    assert not limit.allow("a", 2, 60)
    now[0] = 60.0
    assert limit.allow("a", 2, 60), "the window slides"


def job(**values) -> JobRecord:
    base = dict(name="coco", spec_yaml="", source="", state="failed", state_reason="", created_at=1000.0,
                updated_at=0, owner_uid=None, owner_gid=None, run_dir=None, pid=None, pid_start_time=None,
                attempts=2, crash_restarts=1, no_progress_streak=0, backoff_level=0, next_start_at=None,
                epochs_done=37, last_cause="config_error", batch_override=None)
    base.update(values)
    return JobRecord(**base)


def attempt(number, started, ended, cause, detail, first_batch=None) -> AttemptRecord:
    return AttemptRecord(number, "coco", number, started, ended, 1, 1.0, 1, None, cause, detail, 0, None,
                         None, first_batch)


def test_the_message_names_job_event_cause_epochs_restarts_goodput_and_where_to_look():
    attempts = [attempt(1, 1000, 1900, "killed", "SIGKILL", first_batch=1100),
                attempt(2, 1950, 2000, "config_error", "failed before the first epoch: FileNotFoundError: "
                        "'/data/coco.yaml' does not exist")]
    notice = build_notice("failed", "configuration error: not retried", job(), 300, attempts, 2000.0, "gpu1",
                          held_back=4)
    assert notice.title == "[gpu1] coco: failed" and notice.notify_type == "failure"
    lines = notice.body.splitlines()
    assert lines[0] == "coco failed: configuration error: not retried"
    assert lines[1] == ("attempt 2 ended: config_error: failed before the first epoch: FileNotFoundError: "
                        "'/data/coco.yaml' does not exist")
    assert lines[2].startswith("epochs 37/300, restarts 1 (killed), goodput 80% of 16m40s"), lines[2]
    assert "4 restarted/stalled notification(s)" in lines[3]
    assert lines[-1] == "more: ssh gpu1 yolo-supervisorctl history coco"


def test_a_hold_before_any_attempt_has_no_cause_line():
    notice = build_notice("held", "devices unhealthy: GPU 0: XID 79 (fallen off the bus)",
                          job(state="held", attempts=0, epochs_done=0), 10, [], 1001.0, "h")
    assert notice.body.splitlines()[:2] == ["coco held: devices unhealthy: GPU 0: XID 79 (fallen off the bus)",
                                            "epochs 0/10, restarts 0, goodput 0% of 0m01s"]


def test_targets_are_the_daemons_plus_the_jobs_and_the_jobs_on_wins():
    daemon_url, job_url = "json://127.0.0.1:1/a-secret", "ntfy://ntfy.sh/my-topic-secret"
    settings = NotifySettings(urls=[daemon_url])
    targets, on = targets_for(settings, None)
    assert [t.url for t in targets] == [daemon_url] and on == ("failed", "held", "completed")
    targets, on = targets_for(settings, JobNotify(urls=(job_url,), on=("restarted",)))
    assert [t.url for t in targets] == [daemon_url, job_url] and on == ("restarted",)
    assert targets[1].label == f"job file notify.urls[0] (ntfy://…, #{fingerprint(job_url)})"
    assert not any("secret" in t.label for t in targets)
    targets, _ = targets_for(settings, JobNotify(urls=(daemon_url, job_url)))
    assert [t.url for t in targets] == [daemon_url, job_url], "a URL in both is one target"


@pytest.mark.parametrize("url, hidden, kept", [
    ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ", ["T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ"],
     []),
    ("ntfys://alice:hunter22@ntfy.example.com/private-topic", ["alice", "hunter22", "private-topic"],
     ["ntfy.example.com"]),
    (f"json://127.0.0.1:8080/{SECRET}?token=abcdef123", [SECRET, "abcdef123"], ["127.0.0.1:8080"]),
])
def test_redaction_hides_every_secret_part_of_a_url(url, hidden, kept):
    text = redact(f"Failed to send to {url}: 401; " + " ".join(hidden + kept), [url])
    assert not [h for h in hidden if h in text], text
    assert all(k in text for k in kept), text


# -- settings -------------------------------------------------------------------------------
def spec_text(**notify) -> str:
    return yaml.safe_dump({"name": "n", "train": {"model": "m.yaml", "data": "d.yaml", "epochs": 1},
                           "notify": notify})


def test_job_file_notify_is_validated_by_field_and_never_quotes_a_url():
    with pytest.raises(SpecError) as err:
        parse_spec_text(spec_text(urls=["json://ok.example/x", f"nosuch://{SECRET}"], on=["failed", "boom"]))
    problems = err.value.problems
    assert any(p.startswith("notify.urls: [1]: not a notification URL apprise can use (scheme 'nosuch://'")
               for p in problems), problems
    assert any(p.startswith("notify.on.1: Input should be") for p in problems), problems
    assert SECRET not in str(err.value)


def test_the_yaml_key_on_is_read_as_on_not_as_true():
    text = "name: n\ntrain: {model: m.yaml, data: d.yaml, epochs: 1}\nnotify:\n  on: [restarted]\n"
    assert yaml.safe_load(text)["notify"] == {True: ["restarted"]}  # what PyYAML does
    assert parse_spec_text(text).notify.on == ("restarted",)


def test_apprise_says_nothing_on_stderr_about_a_bad_url():
    code = ("from supervisor.jobs.spec import parse_spec_text, SpecError\n"
            f"try: parse_spec_text({spec_text(urls=[f'slack://{SECRET}'])!r})\n"
            "except SpecError as e: print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])))
    assert out.stdout.strip() == "refused" and SECRET not in out.stderr, out.stderr


def test_a_config_with_urls_is_made_private_and_a_bad_one_is_refused_without_the_url(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(f"notify:\n  urls: ['json://127.0.0.1:9/{SECRET}']\n  on: [failed, restarted]\n")
    path.chmod(0o644)
    config = load_config(path)
    assert config.notify.on == ["failed", "restarted"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text(f"notify:\n  urls: ['nosuch://{SECRET}']\n  retries: -1\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    assert "notify.urls: [0]: not a notification URL" in str(err.value) and "notify.retries" in str(err.value)
    assert SECRET not in str(err.value)
    path.write_text("log_level: info\n")
    path.chmod(0o644)
    load_config(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644, "no URLs: the mode is left alone"


# -- the store tells listeners of committed events only ---------------------------------------------
def test_listeners_hear_committed_events_once_and_rolled_back_ones_never(tmp_path):
    store = Store(tmp_path / "state.db")
    heard = []
    store.listeners.append(heard.append)
    first = store.add_event("a", "snapshot", "outside a transaction")
    assert [e.id for e in heard] == [first] and heard[0].reason == "outside a transaction"
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.add_event("a", "state", "rolled back", to_state="failed")
            raise RuntimeError("boom")
    assert len(heard) == 1
    with store.transaction():
        with store.transaction():  # nested: joins the outer one
            store.add_event("a", "state", "inner", from_state="running", to_state="failed")
        store.add_event("b", "exit", "outer", data={"exit_code": 1})
        assert len(heard) == 1, "not before the commit"
    assert [e.reason for e in heard[1:]] == ["inner", "outer"]
    assert heard[1].from_state == "running" and heard[2].data == '{"exit_code": 1}'
    assert [e.reason for e in store.events("a")] == ["outside a transaction", "inner"]


def test_a_listener_that_raises_does_not_undo_the_write(tmp_path):
    store = Store(tmp_path / "state.db")
    store.listeners.append(lambda e: 1 / 0)
    store.add_event("a", "snapshot", "kept")
    assert [e.reason for e in store.events("a")] == ["kept"]


def test_event_pages_and_the_newest_events(tmp_path):
    store = Store(tmp_path / "state.db")
    ids = [store.add_event("a" if i % 2 else "b", "k", str(i)) for i in range(7)]
    assert [e.reason for e in store.events_after(ids[2])] == ["3", "4", "5", "6"]
    assert [e.reason for e in store.events_after(0, "a", limit=2)] == ["1", "3"]
    assert [e.reason for e in store.latest_events(2)] == ["5", "6"]
    assert [e.reason for e in store.latest_events(2, "b")] == ["4", "6"]
    assert store.last_event_id() == ids[-1]


def test_event_line():
    e = {"id": 3, "job": "coco", "at": 0, "kind": "state", "from_state": "running", "to_state": "backoff",
         "reason": "killed: restart 1 of 5", "actor": None, "data": None}
    assert event_line(e).endswith("  coco  state running->backoff: killed: restart 1 of 5")
    assert event_line({**e, "kind": "stop", "to_state": None, "actor": "uid 0 (root)"}).endswith(
        "coco  stop: killed: restart 1 of 5 [uid 0 (root)]")


# -- sending: retries, timeout, a full queue ----------------------------------------------------
class Owner:
    """What a TargetSender needs of Notifications: settings, a log, a closing flag."""

    def __init__(self, **settings):
        self.settings = NotifySettings(**settings)
        self.daemon = type("D", (), {"log": get_logger()})()
        self._closing = threading.Event()


NOTICE = Notice("coco", "failed", "[h] coco: failed", "body")


def test_a_failed_send_is_retried_then_succeeds():
    target = Receiver(fail_first=2)
    try:
        sender = TargetSender(Target(target.url(), "t"), Owner(retries=2, timeout_s=5))
        done = Outgoing(NOTICE, tries=3, result=concurrent.futures.Future())
        sender.put(done)
        assert done.result.result(timeout=30) == (True, "sent")
        assert target.posts == 3 and [m["title"] for m in target.received()] == ["[h] coco: failed"]
    finally:
        target.close()


def test_a_send_gives_up_after_its_tries_and_says_why_without_the_url():
    target = Receiver(fail_first=10)
    try:
        sender = TargetSender(Target(target.url(), "t"), Owner(retries=1, timeout_s=5))
        done = Outgoing(NOTICE, tries=2, result=concurrent.futures.Future())
        sender.put(done)
        ok, message = done.result.result(timeout=30)
        assert not ok and "500" in message and SECRET not in message, message
        assert target.posts == 2
    finally:
        target.close()


def test_a_silent_target_times_out_and_a_full_queue_drops_without_waiting():
    silent = Silent()
    try:
        sender = TargetSender(Target(silent.url(), "t"), Owner(timeout_s=0.5, queue_size=1))
        first = Outgoing(NOTICE, tries=1, result=concurrent.futures.Future())
        t0 = time.monotonic()
        sender.put(first)
        ok, message = first.result.result(timeout=30)
        assert not ok and time.monotonic() - t0 < 10
        blocked = [Outgoing(NOTICE, tries=1, result=concurrent.futures.Future()) for _ in range(3)]
        t0 = time.monotonic()
        accepted = [sender.put(item) for item in blocked]
        assert time.monotonic() - t0 < 0.5, "put never waits"
        assert accepted.count(False) >= 1
        dropped = next(item for item, was in zip(blocked, accepted) if not was)
        assert dropped.result.result(timeout=1)[1].startswith("not sent: this target's queue is full")
    finally:
        silent.close()


def test_events_is_read_only_and_notify_test_is_not():
    from supervisor.control.handlers import HANDLERS

    assert not HANDLERS["events"].mutates and HANDLERS["notify-test"].mutates


def test_the_daemon_imports_apprise_only_when_it_sends_and_apprise_pulls_no_torch():
    code = ("import sys\n"
            "import supervisor.daemon.main, supervisor.daemon.core, supervisor.control.handlers\n"
            "print('apprise' in sys.modules)\n"
            "from supervisor.jobs.notify_spec import url_problem; url_problem('json://localhost/x')\n"
            "print('apprise' in sys.modules, sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'ultralytics', 'torchvision')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])))
    assert out.stdout.split("\n")[:2] == ["False", "True []"], out.stdout


def test_a_notice_names_the_jobs_tracker_runs():
    from supervisor.jobs.trackers import TrackerRecord

    rec = TrackerRecord()
    rec.take_reported({"mlflow": {"id": "r1", "url": "http://mlflow:5000/#/experiments/1/runs/r1"},
                       "wandb": {"id": "abcd1234", "url": "https://wandb.ai/me/coco/runs/abcd1234"}})
    notice = build_notice("completed", "training finished", job(state="completed", trackers=rec.dump()), 300,
                          [], 2000.0, "gpu1")
    lines = notice.body.splitlines()
    assert "mlflow: run r1 http://mlflow:5000/#/experiments/1/runs/r1" in lines
    assert "wandb: run abcd1234 https://wandb.ai/me/coco/runs/abcd1234" in lines
