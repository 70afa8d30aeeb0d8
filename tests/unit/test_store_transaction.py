"""Rows that belong together land together: Store.transaction on a real SQLite file."""

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
