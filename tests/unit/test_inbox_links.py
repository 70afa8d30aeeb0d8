"""The drop directory never follows a link that whoever may write to it planted there.

A real Daemon object on a temp home (no loop), real files and real symbolic links.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from supervisor.control.inbox import handle_drop_file
from supervisor.daemon.core import Daemon
from supervisor.paths import Home


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(Home(tmp_path / "home"))
    yield d
    d.store.close()


def drop(daemon: Daemon, name: str, text: str) -> Path:
    path = daemon.home.inbox / name
    path.write_text(text)
    return path


BAD = "name: bad\ntrain: {model: yolov8n.yaml, data: /x.yaml, epochs: 2, no_such_key: 'chosen content'}\n"
GOOD = yaml.safe_dump({"name": "good", "train": {"model": "yolov8n.yaml", "data": "/nonexistent/data.yaml",
                                                 "epochs": 2, "device": "cpu"}})


def test_a_link_at_rejected_is_moved_aside_not_followed(daemon, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (daemon.home.inbox / "rejected").symlink_to(elsewhere)
    assert handle_drop_file(daemon, drop(daemon, "bad.yaml", BAD)) is False
    assert list(elsewhere.iterdir()) == []
    rejected = daemon.home.inbox / "rejected"
    assert rejected.is_dir() and not rejected.is_symlink()
    assert (rejected / "bad.yaml").read_text() == BAD
    assert "no_such_key" in (rejected / "bad.yaml.error").read_text()


def test_a_link_at_the_error_files_name_is_replaced_not_written_through(daemon, tmp_path):
    victim = tmp_path / "config.yaml"
    victim.write_text("tick_s: 1\n")
    rejected = daemon.home.inbox / "rejected"
    rejected.mkdir()
    (rejected / "bad.yaml.error").symlink_to(victim)
    handle_drop_file(daemon, drop(daemon, "bad.yaml", BAD))
    assert victim.read_text() == "tick_s: 1\n"
    assert "no_such_key" in (rejected / "bad.yaml.error").read_text()


def test_a_link_at_accepted_is_moved_aside_not_followed(daemon, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (daemon.home.inbox / "accepted").symlink_to(elsewhere)
    assert handle_drop_file(daemon, drop(daemon, "good.yaml", GOOD)) is True
    assert list(elsewhere.iterdir()) == []
    assert (daemon.home.inbox / "accepted" / "good.yaml").read_text() == GOOD
    assert daemon.store.get_job("good").state == "queued"
