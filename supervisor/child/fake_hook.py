"""TEST ONLY: run a script instead of Ultralytics (control-plane tests need a cheap long-running job)."""

from __future__ import annotations

from supervisor.child.reporter import Reporter
from supervisor.contract import Plan, to_json

# Never set it on a real daemon.
FAKE_TRAINER_ENV = "YOLO_SUPERVISOR_FAKE_TRAINER"


def run_fake_trainer(script: str, plan: Plan, rep: Reporter) -> int:
    """TEST ONLY (see FAKE_TRAINER_ENV): ``script`` runs with ``plan`` (as JSON) and ``reporter`` as globals."""
    import runpy

    runpy.run_path(script, init_globals={"plan": to_json(plan), "reporter": rep}, run_name="__main__")
    rep.exit_record(0)
    return 0
