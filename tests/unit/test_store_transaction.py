"""Rows that belong together land together: Store.transaction on a real SQLite file."""

import json
import sqlite3

import pytest

from supervisor.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state.db")
    s.add_job("j", "name: j", "backoff")
    yield s
    s.close()


def test_a_failure_inside_a_transaction_leaves_none_of_its_rows(store, tmp_path):
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.start_attempt("j", 1, 123, 1.0, 0, None)
            store.update_job("j", state="starting", attempts=1)
            raise RuntimeError("the daemon dies here")
    assert store.attempts("j") == []
    assert store.get_job("j").state == "backoff"
    # and another connection (the next daemon) sees the same
    other = sqlite3.connect(tmp_path / "state.db")
    assert other.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 0


def test_a_committed_transaction_is_seen_by_another_connection(store, tmp_path):
    with store.transaction():
        store.start_attempt("j", 1, 123, 1.0, 0, None)
        store.update_job("j", state="starting", attempts=1)
        other = sqlite3.connect(tmp_path / "state.db", timeout=0)
        assert other.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 0  # not yet visible
    assert other.execute("SELECT state FROM jobs WHERE name = 'j'").fetchone()[0] == "starting"
    assert other.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 1


def test_nested_blocks_join_the_outer_one(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            with store.transaction():
                store.add_event("j", "note", "inner")
            raise RuntimeError("outer fails after the inner block ended")
    assert store.events("j") == []


def test_remove_job_deletes_its_rows_together(store):
    store.start_attempt("j", 1, 123, 1.0, 0, None)
    store.add_event("j", "note", "x")
    store.remove_job("j")
    assert store.get_job("j") is None and store.attempts("j") == [] and store.events("j") == []


def test_two_processes_adding_the_new_columns_at_once_both_open_the_database(tmp_path):
    """A CLI and the daemon open an old database at the same moment: neither fails on the migration."""
    import subprocess
    import sys

    from supervisor.store import ADDED_COLUMNS, SCHEMA

    db = tmp_path / "state.db"
    old = sqlite3.connect(db)
    old.executescript(SCHEMA)  # the base schema: the later columns are missing
    have = {row[1] for row in old.execute("PRAGMA table_info(attempts)")}
    assert {c for t, c, _ in ADDED_COLUMNS if t == "attempts"} - have
    old.close()
    code = ("import sys; from supervisor.store import Store\n"
            "for _ in range(20): Store(sys.argv[1]).close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db)], stderr=subprocess.PIPE) for _ in range(4)]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), errors


def test_an_events_long_text_and_strings_are_cut_and_too_much_data_left_out(store):
    from supervisor.store import MAX_EVENT_DATA, MAX_EVENT_REASON, MAX_EVENT_VALUE

    path = "/data/" + "p" * 60_000 + "/end.yaml"
    reason = f"data: {path} not found"
    store.add_event("a", "failed", reason, data={"paths": [path] * 3, "n": 7})
    [event] = store.events("a")
    assert len(event.reason) <= MAX_EVENT_REASON + 40 and event.reason.startswith("data: /data/ppp")
    assert event.reason.endswith(f"[cut: {len(reason)} characters]")
    data = json.loads(event.data)
    assert data["n"] == 7 and all(len(p) <= MAX_EVENT_VALUE + 40 and f"cut: {len(path)} " in p for p in data["paths"])
    store.add_event("a", "flood", "many", data={"notes": ["n" * 100] * 2000})
    assert json.loads(store.events("a")[-1].data) == {"omitted_bytes": len(json.dumps({"notes": ["n" * 100] * 2000}))}
    assert len(store.events("a")[-1].data) < MAX_EVENT_DATA
    store.add_event("a", "note", "short", data={"k": 1})
    assert (store.events("a")[-1].reason, json.loads(store.events("a")[-1].data)) == ("short", {"k": 1})
