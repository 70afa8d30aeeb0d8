"""The state machine is one table (supervisor/jobs/machine.py), applied by a real Daemon over a temp home.

Every (state, event) pair is tried through ``Daemon.transition``: a pair in the table moves the job,
records the event's name with the move and does the move's actions; any other pair raises and
changes nothing. The README's diagram is the table's own drawing.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import yaml

from supervisor.daemon.config import DaemonConfig
from supervisor.daemon.core import Daemon, IllegalTransition
from supervisor.daemon.running import Running
from supervisor.jobs import machine
from supervisor.jobs.machine import TABLE, Do, On
from supervisor.jobs.states import JobState
from supervisor.paths import Home
from supervisor.process.launcher import Child
from tests.conftest import FAKE_DATA

README = Path(__file__).parents[2] / "README.md"
SPEC = yaml.safe_dump({"name": "j", "train": {"model": "yolov8n.yaml", "data": str(FAKE_DATA),
                                              "epochs": 2, "device": "cpu"}})
PAIRS = list(itertools.product(JobState, On))


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    d = Daemon(Home(tmp_path / "home"), DaemonConfig())
    d.acted = []  # what the actions did, by name (the TERM itself is the e2e tests' to check)
    monkeypatch.setattr(d.attempts, "send_term", lambda name, run, grace, actor=None: d.acted.append(("term", grace)))
    monkeypatch.setattr(d.health, "forget", lambda name: d.acted.append(("forget_health", name)))
    monkeypatch.setattr("supervisor.daemon.trackers.finalize",
                        lambda daemon, name, state: d.acted.append(("end_tracker_run", state)))
    yield d
    d.store.close()


def put(daemon: Daemon, state: JobState) -> None:
    daemon.store.add_job("j", SPEC, state.value, source="test")
    daemon.running["j"] = Running(Child("j", 1, 0.0, -1), 1, 1, 0, log_offset=0)


@pytest.mark.parametrize("state,on", [p for p in PAIRS if p in TABLE], ids=lambda v: v.value)
def test_a_pair_in_the_table_moves_the_job_records_the_event_and_acts(daemon, state, on):
    put(daemon, state)
    move = TABLE[(state, on)]
    daemon.transition("j", on, "why", "alice", grace=7.0)
    job = daemon.store.get_job("j")
    assert (job.state, job.state_reason) == (move.to.value, "why")
    events = [e for e in daemon.store.events("j") if e.kind == "state"]
    if move.to is state:
        assert events == []  # the reason changed, the state did not: no move to record
    else:
        [event] = events
        assert (event.from_state, event.to_state, event.actor) == (state.value, move.to.value, "alice")
        assert json.loads(event.data) == {"on": on.value}
    expected = {Do.SIGNAL_TERM: ("term", 7.0), Do.FORGET_HEALTH: ("forget_health", "j"),
                Do.END_TRACKER_RUN: ("end_tracker_run", move.to.value)}
    assert sorted(daemon.acted) == sorted(expected[a] for a in move.actions)


@pytest.mark.parametrize("state,on", [p for p in PAIRS if p not in TABLE], ids=lambda v: v.value)
def test_a_pair_not_in_the_table_raises_and_changes_nothing(daemon, state, on, table_check):
    put(daemon, state)
    with pytest.raises(IllegalTransition, match=f"internal error: no transition from {state.value} on {on.value}"):
        daemon.transition("j", on, "a bug")
    table_check.planted(f"j: {state.value} on {on.value} (a bug)")
    assert daemon.store.get_job("j").state == state.value
    assert daemon.store.events("j") == [] and daemon.acted == []


def test_the_tables_moves_are_the_ones_a_user_expects():
    """A few moves spelled out, so a wrong row in the table cannot pass as its own truth."""
    S = JobState
    assert TABLE[(S.RUNNING, On.STOP_REQUESTED)].to is S.STOPPING
    assert Do.SIGNAL_TERM in TABLE[(S.RUNNING, On.STOP_REQUESTED)].actions
    assert TABLE[(S.QUEUED, On.STOP_REQUESTED)] == machine.Move(S.STOPPED, (Do.END_TRACKER_RUN, Do.FORGET_HEALTH))
    assert (S.STOPPING, On.STOP_REQUESTED) not in TABLE  # already stopping: an event, not a move
    assert (S.COMPLETED, On.START_REQUESTED) not in TABLE  # `extend` trains a completed job further
    assert TABLE[(S.STOPPING, On.ENDED_REQUEUE)].to is S.QUEUED
    assert TABLE[(S.RUNNING, On.ENDED_RESTART)].to is S.BACKOFF
    for final in (S.COMPLETED, S.FAILED, S.STOPPED):  # nothing leaves an end but a user's command
        assert {on for (state, on) in TABLE if state is final} <= {On.START_REQUESTED, On.RESTART_REQUESTED,
                                                                    On.EXTENDED}


def test_every_state_is_reachable_and_every_event_is_used():
    reached = {JobState.QUEUED} | {move.to for move in TABLE.values()}
    assert reached == set(JobState)
    assert {on for (_, on) in TABLE} == set(On)


def test_the_readme_diagram_is_the_table():
    text = README.read_text()
    found = re.search(r"<!-- state-machine: generated .*? -->\n```mermaid\n(.*?)\n```", text, re.S)
    assert found, "README.md has no generated state diagram block"
    assert found.group(1) == machine.mermaid(), \
        "README.md's state diagram differs from the table: regenerate it with `python -m supervisor.jobs.machine`"
