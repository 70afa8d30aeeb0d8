"""Inputs that took `status` or the socket down for everyone (issue 10, availability).

A real daemon (the test-only fake trainer), its real socket and real SQLite database.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from supervisor.store import Store
from tests.conftest import cpu_job, ctl, wait_for, wait_socket


def fake_job(name: str, **extra) -> dict:
    return cpu_job(name, Path("/nonexistent/data.yaml"), epochs=2, **extra)


def submit(daemon, tmp_path: Path, spec: dict) -> None:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = ctl(daemon.home, "submit", str(path))
    assert done.returncode == 0, done.stderr


def test_a_stored_spec_that_no_longer_validates_is_shown_not_fatal(fake_daemon, tmp_path):
    fake_daemon.start()
    wait_socket(fake_daemon)
    submit(fake_daemon, tmp_path, fake_job("fine"))
    # What an Ultralytics upgrade that drops an argument does to a stored spec (or what a
    # "device: []" stored by an older daemon is): it no longer validates when read again.
    store = Store(fake_daemon.home / "state.db")
    bad = yaml.safe_dump({**fake_job("broken"), "train": {**fake_job("broken")["train"], "device": ""}})
    store.add_job("broken", bad, "queued", source="an older daemon")
    store.close()

    job = fake_daemon.wait_state("broken", "failed", timeout=30)
    assert "no longer validates" in job.state_reason and "device" in job.state_reason
    listing = ctl(fake_daemon.home, "status")
    assert listing.returncode == 0, listing.stderr
    assert "fine" in listing.stdout and "broken" in listing.stdout
    rows = {r["name"]: r for r in json.loads(ctl(fake_daemon.home, "status", "--json").stdout)}
    assert "device" in rows["broken"]["spec_problem"] and rows["fine"]["spec_problem"] is None
    assert ctl(fake_daemon.home, "history", "broken").returncode == 0
    tracebacks = fake_daemon.log.read_text().count('"job step failed"')
    assert tracebacks == 0, fake_daemon.log.read_text()[-2000:]
