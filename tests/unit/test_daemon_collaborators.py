"""The daemon holds its parts and calls them (issue 21, items 4 and 5), on a real Daemon over a temp home."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from supervisor.daemon.attempts import Attempts
from supervisor.daemon.commands import Commands
from supervisor.daemon.core import Daemon
from supervisor.daemon.ending import AttemptEnding
from supervisor.daemon.launches import Launches
from supervisor.daemon.scheduling import GpuScheduling
from tests.conftest import FAKE_DATA, FAKE_TRAINER, in_process_daemon, settle

SPEC = yaml.safe_dump({"name": "j", "train": {"model": "yolov8n.yaml", "data": str(FAKE_DATA),
                                              "epochs": 2, "device": "cpu"}})
CORE = Path(__file__).parents[2] / "supervisor" / "daemon" / "core.py"


@pytest.fixture
def daemon(tmp_path):
    yield from in_process_daemon(tmp_path)


def test_the_daemon_holds_its_parts_instead_of_inheriting_them(daemon):
    assert Daemon.__bases__ == (object,)
    parts = {"scheduling": GpuScheduling, "endings": AttemptEnding, "launches": Launches,
             "attempts": Attempts, "commands": Commands}
    assert {name: type(getattr(daemon, name)) for name in parts} == parts
    assert len(CORE.read_text().splitlines()) <= 400, "core.py keeps the loop and the lifecycle glue only"


def test_a_launch_loads_the_job_once_and_its_steps_take_that(daemon, monkeypatch):
    """The owner's identity and the edited keys were looked up by name again at each step (three
    identity lookups and two scans of the job's history for one launch)."""
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(FAKE_TRAINER))
    daemon.store.add_job("j", SPEC, "queued", source="test")
    daemon.home.ensure_job("j")
    calls: list[str] = []
    for method in ("job_identity", "edited_keys"):
        real = getattr(Daemon, method)
        monkeypatch.setattr(Daemon, method, lambda self, arg, real=real, method=method:
                            calls.append(method) or real(self, arg))
    daemon.launch("j")
    settle(daemon)  # the worker's half, then the attempt recorded on the loop
    assert daemon.store.get_job("j").state == "starting" and "j" in daemon.running
    assert sorted(calls) == ["edited_keys", "job_identity"]
