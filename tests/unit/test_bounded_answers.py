"""Answers of any size, requests of bounded size (issue 20, item 4), and a scheduler whose cost
does not grow faster than the queue (the scale target): a real Daemon with its loop on a thread,
its real control server on a real Unix socket, real SQLite."""

from __future__ import annotations

import json

import socket
import threading
import time

import pytest
import yaml

from supervisor.control import server as server_mod
from supervisor.control.protocol import (MAX_MESSAGE_BYTES, Connection, ErrorCode, Request, RequestError, Response,
                                         connect)
from supervisor.daemon import specs
from supervisor.daemon import scheduling
from supervisor.daemon.config import DaemonConfig
from supervisor.daemon.core import Daemon
from supervisor.jobs.spec import parse_spec_text, spec_to_yaml
from supervisor.paths import Home
from tests.conftest import FAKE_DATA, in_process_daemon, wait_for

LONG = 60 * 1024  # the 60 KB data path of the finding


def spec_text(name: str) -> str:
    raw = {"name": name, "gpus": 1, "train": {"model": "yolov8n.yaml", "data": str(FAKE_DATA), "epochs": 2}}
    return spec_to_yaml(parse_spec_text(yaml.safe_dump(raw), name))


def add_jobs(daemon: Daemon, count: int, state: str = "stopped", prefix: str = "job", **fields) -> list[str]:
    """Jobs straight into the store (submitting thousands through the socket is not the point)."""
    text = spec_text("TEMPLATE")
    names = [f"{prefix}{i:05d}" for i in range(count)]
    with daemon.store.transaction():
        for name in names:
            daemon.store.add_job(name, text.replace("TEMPLATE", name), state, source="test")
            if fields:
                daemon.store.update_job(name, **fields)
    return names


@pytest.fixture
def served(tmp_path):
    """(daemon, socket path): the daemon's loop steps on a thread; no housekeeping (nothing starts)."""
    daemon = Daemon(Home(tmp_path / "home"), DaemonConfig(gpus=[0]))
    stop = threading.Event()
    loop = threading.Thread(target=lambda: [daemon.step(0.02) for _ in iter(stop.is_set, True)], daemon=True)
    loop.start()
    path = tmp_path / "ctl.sock"
    srv = server_mod.ControlServer(daemon, path)
    srv.start()
    yield daemon, path
    srv.close()
    stop.set()
    loop.join(5)
    daemon.store.close()


def ask(path, cmd: str, **args):
    with connect(path) as conn:
        return conn.request(Request(cmd, args)).unwrap()


# -- answers of any size ------------------------------------------------------------------------
def test_jobs_with_60kb_values_do_not_break_the_listing_and_show_whole_in_their_own_view(served):
    """18 jobs with 60 KB data paths made plain `status` exceed the 1 MiB frame, for everyone."""
    daemon, path = served
    reason = "dataset file /data/" + "d" * LONG + ".yaml is missing"
    names = add_jobs(daemon, 20, state="held", state_reason=reason)
    listing = ask(path, "status")
    assert [v["name"] for v in listing] == names
    cut = listing[0]["state_reason"]
    assert len(cut) < 1000 and cut.startswith("dataset file /data/ddd") and f"cut: {len(reason)} characters" in cut
    own = ask(path, "status", names=[names[3]])
    assert own[0]["state_reason"] == reason


def test_a_listing_of_3000_jobs_is_answered_in_parts(served):
    """About 1,500 ordinary jobs made the answer larger than one message: `status` failed."""
    daemon, path = served
    names = add_jobs(daemon, 3000)
    with connect(path) as conn:
        conn.send(Request("status", {}).to_wire())
        first = conn.receive()
    assert first["ok"] is True and first["more"] is True and isinstance(first["part"], list)
    listing = ask(path, "status")
    assert [v["name"] for v in listing] == names


def test_events_and_history_list_an_event_with_a_600kb_value(served):
    """One `edit workers=<600 KB>` broke `events` and `history` for that job (and `events` for all)."""
    daemon, path = served
    (name,) = add_jobs(daemon, 1)
    # Rows as an older version stored them (the store now cuts long values when it writes them).
    daemon.store._exec("INSERT INTO events (job, at, kind, reason, data) VALUES (?, ?, 'edit', ?, ?)",
                       (name, 1.0, "train.workers changed", json.dumps({"old": 4, "new": "9" * 600_000})))
    daemon.store._exec("INSERT INTO events (job, at, kind, reason) VALUES (?, ?, 'edit', ?)", (name, 2.0, "x" * 600_000))
    events = ask(path, "events", after_id=0)["events"]
    assert [e["kind"] for e in events] == ["edit", "edit"]
    assert "cut: 600000 characters" in events[0]["data"]["new"] and len(events[0]["data"]["new"]) < 3000
    assert "cut: 600000 characters" in events[1]["reason"]
    history = ask(path, "history", name=name)
    assert len(history["events"]) == 2 and history["job"]["name"] == name


# -- requests of bounded size ---------------------------------------------------------------------
def test_a_status_naming_a_job_100000_times_looks_it_up_once(served):
    """It rendered the job 100,000 times on the loop (9 s) and then failed over the frame."""
    daemon, path = served
    (name,) = add_jobs(daemon, 1, prefix="a")  # a short name: 100,000 of them fit one request
    views = ask(path, "status", names=[name] * 100_000)
    assert [v["name"] for v in views] == [name]


def test_a_status_naming_too_many_distinct_jobs_is_a_usage_error(served):
    daemon, path = served
    with pytest.raises(RequestError) as err:
        ask(path, "status", names=[f"job{i}" for i in range(1001)])
    assert err.value.code is ErrorCode.USAGE and "at most 1000" in str(err.value)


def test_an_edit_of_a_600kb_value_is_refused_and_changes_nothing(served):
    daemon, path = served
    (name,) = add_jobs(daemon, 1)
    before = daemon.store.get_job(name).spec_yaml
    with pytest.raises(RequestError) as err:
        ask(path, "edit", name=name, values={"workers": "9" * 600_000})
    assert err.value.code is ErrorCode.USAGE and "at most 4096 bytes" in str(err.value)
    with pytest.raises(RequestError) as err:
        ask(path, "edit", name=name, values={f"k{i}": 1 for i in range(33)})
    assert err.value.code is ErrorCode.USAGE and "at most 32" in str(err.value)
    assert daemon.store.get_job(name).spec_yaml == before


# -- the protocol's parts ----------------------------------------------------------------------------
@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield Connection(a), Connection(b)
    a.close()
    b.close()


def test_an_object_answer_is_cut_between_its_list_items_and_joined_back(pair):
    client, server = pair
    answer = {"job": {"name": "j"}, "attempts": [{"detail": "a" * 900}] * 1500,
              "events": [{"reason": "e" * 700}] * 3000, "goodput": {"x": 1}}
    sender = threading.Thread(target=server.send_response, args=(Response.success(answer),))
    sender.start()  # the socket buffer is smaller than the answer: send while the other side reads
    client.send(Request("history", {}).to_wire())
    assert client.request(Request("history", {})).unwrap() == answer
    sender.join(5)


def test_an_item_alone_over_the_message_limit_is_replaced_not_fatal(pair):
    client, server = pair
    answer = [{"name": "big", "reason": "x" * MAX_MESSAGE_BYTES}, {"name": "small"}]
    sender = threading.Thread(target=server.send_response, args=(Response.success(answer),))
    sender.start()
    assert client.request(Request("status", {})).unwrap() == [
        {"name": "big", "error": "over the message limit"}, {"name": "small"}]
    sender.join(5)


# -- the scheduler's cost ---------------------------------------------------------------------------
@pytest.fixture
def daemon(tmp_path):
    yield from in_process_daemon(tmp_path, DaemonConfig(gpus=[0]))


def test_specs_are_parsed_once_however_many_jobs_there_are(daemon, monkeypatch):
    """An LRU cache of 256 specs thrashed at 300 jobs: every tick re-parsed every job's YAML (a core at 500)."""
    add_jobs(daemon, 300)
    daemon.valid_specs()
    parsed = []
    real = specs.parse_spec_text
    monkeypatch.setattr(specs, "parse_spec_text", lambda *a: parsed.append(a) or real(*a))
    assert len(daemon.valid_specs()) == 300
    assert parsed == []


def test_a_placement_round_whose_inputs_did_not_change_is_skipped(daemon, monkeypatch):
    """200 jobs queued behind a GPU held by a job in backoff: each tick placed all 200 again."""
    (holder,) = add_jobs(daemon, 1, state="backoff", prefix="holder", devices="0",
                         next_start_at=time.time() + 1.5)
    add_jobs(daemon, 200, state="queued")
    rounds = []
    real = scheduling.place
    monkeypatch.setattr(scheduling, "place", lambda *a, **k: rounds.append(1) or real(*a, **k))
    monkeypatch.setattr(daemon.launches, "launch", lambda name, actor=None, gpus=(): None)  # placement is the subject, not launching
    daemon.start_due_jobs()
    assert len(rounds) == 1
    assert daemon.store.get_job("job00000").state_reason.startswith("waiting for 1 free GPU")
    for _ in range(5):
        daemon.start_due_jobs()
    assert len(rounds) == 1  # nothing changed: nothing decided again
    daemon.store.update_job("job00007", state="stopped")  # any write may change the answer
    daemon.start_due_jobs()
    assert len(rounds) == 2
    wait_for(lambda: daemon.start_due_jobs() is not None and len(rounds) == 3, timeout=10,
             what="a round once the holder's backoff is over")


def test_a_placed_job_that_did_not_start_is_placed_again_at_the_next_tick(daemon, monkeypatch):
    """The release gate (its GPU memory not yet free) leaves a placed job queued without a write: the
    skip must not turn the next look into a wait of seconds."""
    add_jobs(daemon, 3, state="queued")
    rounds = []
    real = scheduling.place
    monkeypatch.setattr(scheduling, "place", lambda *a, **k: rounds.append(1) or real(*a, **k))
    monkeypatch.setattr(daemon.launches, "launch", lambda name, actor=None, gpus=(): None)  # placed, but not started
    daemon.start_due_jobs()
    daemon.start_due_jobs()
    assert len(rounds) == 2


def test_a_round_that_failed_is_done_again_at_the_next_tick(daemon, monkeypatch):
    """A failure (a full disk under the state database) must not be remembered as a decided round."""
    add_jobs(daemon, 3, state="queued")
    calls = []

    def failing(*a, **k):
        calls.append(1)
        raise OSError("disk full")
    monkeypatch.setattr(scheduling, "place", failing)
    for _ in range(2):
        with pytest.raises(OSError):
            daemon.start_due_jobs()
    assert len(calls) == 2
