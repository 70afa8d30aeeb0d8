"""One experiment-tracker run per job, across every attempt: the daemon's side (no tracker library).

Each restart is a new process, and Ultralytics' tracker callbacks open a new run per process. The
daemon keeps, per job, the ids every attempt must continue (``TrackerRecord``, a JSON column of
the job in the store):

- ids it chooses at the first launch: the W&B run id and the Comet experiment key;
- ids only the tracker can choose (the MLflow run id, the ClearML task id), which the first
  attempt reports in its progress file and the daemon keeps from then on;
- each attempt and why it started, which the child writes into each run's config.

The child (supervisor/child/trackers.py) pins the ids; ``finalize_argv`` is the short process the
daemon starts, as the job's owner and with the job's environment, to close the MLflow run FINISHED,
FAILED or KILLED when the job ends: the daemon itself never contacts a tracker.

The job's Ultralytics settings start from its owner's own ``settings.json`` and the job's
``settings:`` mapping overrides them (checked here against ``SETTINGS_KEYS``; the child checks them
again against the installed Ultralytics and fails as a config error when that version differs).
"""

from __future__ import annotations

import json
import secrets
import string
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

# Ultralytics' settings keys and their types (ultralytics 8.4.190, settings_version 0.0.8).
SETTINGS_KEYS: dict[str, type] = {
    "settings_version": str, "datasets_dir": str, "weights_dir": str, "runs_dir": str, "uuid": str,
    "sync": bool, "api_key": str, "openai_api_key": str, "clearml": bool, "comet": bool, "dvc": bool,
    "mlflow": bool, "raytune": bool, "tensorboard": bool, "wandb": bool, "vscode_msg": bool,
    "openvino_msg": bool,
}
TRACKERS = ("mlflow", "wandb", "comet", "clearml", "tensorboard")
MAX_OWNER_SETTINGS_BYTES = 64 * 1024
MAX_ID_CHARS = 200
MAX_ATTEMPTS_KEPT = 200
# How each tracker's run ends with the job: MLflow's run statuses.
FINAL_STATUS = {"completed": "FINISHED", "failed": "FAILED", "stopped": "KILLED", "removed": "KILLED"}


def settings_problems(settings: Mapping[str, Any]) -> list[str]:
    """Why a job's ``settings:`` mapping is wrong (an empty list when it is right)."""
    problems = []
    for key, value in settings.items():
        kind = SETTINGS_KEYS.get(key)
        if kind is None:
            problems.append(f"{key!r} is not an Ultralytics setting (one of: {', '.join(sorted(SETTINGS_KEYS))})")
        elif type(value) is not kind:
            problems.append(f"{key}: must be {'true or false' if kind is bool else 'a string'}, not {value!r}")
    return problems


def owner_settings_path(home: str) -> Path:
    """Where ``yolo settings`` keeps a Linux user's settings (Ultralytics' get_user_config_dir)."""
    return Path(home) / ".config" / "Ultralytics" / "settings.json"


def parse_owner_settings(data: bytes) -> dict[str, Any]:
    """The well-typed known keys of an owner's settings.json; anything else is left out (another
    Ultralytics version writes other keys: they must not fail the job)."""
    try:
        loaded = json.loads(data.decode("utf-8", errors="replace"))
    except ValueError:
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {k: v for k, v in loaded.items() if k in SETTINGS_KEYS and type(v) is SETTINGS_KEYS[k]}


def _id(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


@dataclass
class TrackerRecord:
    """What the daemon keeps per job (the ``trackers`` column, JSON)."""

    ids: dict[str, str] = field(default_factory=dict)         # tracker -> the id every attempt continues
    urls: dict[str, str] = field(default_factory=dict)        # tracker -> where to look (when it has one)
    attempts: list[dict[str, Any]] = field(default_factory=list)  # {"attempt", "cause"}
    used: list[str] = field(default_factory=list)            # the trackers a child reported a run of
    finalized: Optional[str] = None                           # the status the runs were closed with

    @classmethod
    def load(cls, text: Optional[str]) -> "TrackerRecord":
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        return cls(ids=_strings(data.get("ids")), urls=_strings(data.get("urls")),
                   attempts=[a for a in data.get("attempts") or [] if isinstance(a, dict)][-MAX_ATTEMPTS_KEPT:],
                   used=[t for t in data.get("used") or [] if t in TRACKERS],
                   finalized=data.get("finalized") if isinstance(data.get("finalized"), str) else None)

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def choose_first_ids(self) -> None:
        """The ids a client may choose: a W&B run id (8 of [a-z0-9], as wandb's own) and a Comet
        experiment key (32 hex digits; Comet takes 32 to 50 alphanumerics)."""
        self.ids.setdefault("wandb", _id(string.ascii_lowercase + string.digits, 8))
        self.ids.setdefault("comet", secrets.token_hex(16))

    def note_attempt(self, attempt: int, cause: str) -> None:
        if not any(a.get("attempt") == attempt for a in self.attempts):
            self.attempts = (self.attempts + [{"attempt": attempt, "cause": cause}])[-MAX_ATTEMPTS_KEPT:]

    def take_reported(self, reported: Any) -> list[str]:
        """Keep the ids and URLs a child reported (untrusted: strings only, bounded); an id the record
        holds already is never replaced. Returns the trackers newly learned."""
        learned = []
        if not isinstance(reported, dict):
            return learned
        for tracker in TRACKERS:
            run = reported.get(tracker)
            if not isinstance(run, dict):
                continue
            run_id, url = run.get("id"), run.get("url")
            if tracker not in self.used:
                self.used.append(tracker)
                learned.append(tracker)
            if isinstance(run_id, str) and 0 < len(run_id) <= MAX_ID_CHARS and tracker not in self.ids:
                self.ids[tracker] = run_id
            if isinstance(url, str) and len(url) <= 2000 and tracker not in self.urls:
                self.urls[tracker] = url
        return learned

    def runs(self) -> dict[str, dict[str, Optional[str]]]:
        """tracker -> {"id", "url"} for the trackers this job's training has logged to."""
        return {t: {"id": self.ids.get(t), "url": self.urls.get(t)} for t in TRACKERS if t in self.used}

    def describe(self, tracker: str) -> str:
        run_id, url = self.ids.get(tracker), self.urls.get(tracker)
        where = " ".join(x for x in (run_id and f"run {run_id}", url) if x)
        return f"{tracker}: {where}" if where else tracker

    def plan(self, owner_settings: Mapping[str, Any], job_settings: Mapping[str, Any]) -> dict[str, Any]:
        """The plan's ``trackers`` part (supervisor/contract.py: Plan)."""
        return {"ids": dict(self.ids), "attempts": list(self.attempts),
                "settings": {"owner": dict(owner_settings), "job": dict(job_settings)}}


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str) and len(v) <= 2000}


def attempt_cause(attempt: int, previous_cause: Optional[str], previous_detail: Optional[str],
                  extend_to: Optional[int], devices: Optional[str], previous_devices: Optional[str]) -> str:
    """Why attempt ``attempt`` starts, in a few words, for the run's config."""
    if attempt == 1:
        return "first attempt"
    why = f"after attempt {attempt - 1}: {previous_cause or 'unknown'}"
    if previous_detail:
        why += f" ({previous_detail[:200]})"
    if extend_to:
        why += f"; extended to {extend_to} epochs"
    if devices != previous_devices and previous_devices is not None:
        why += f"; moved to GPU {devices or 'cpu'}"
    return why


def finalize_argv(python: str, status: str, ids: Mapping[str, str]) -> Optional[list[str]]:
    """The finalizer's command line (``python -m supervisor.child.trackers finalize ...``); None when
    no run of the job has a state to close (only MLflow keeps one a killed process leaves RUNNING)."""
    if not ids.get("mlflow"):
        return None
    return [python or sys.executable, "-m", "supervisor.child.trackers", "finalize", "--status", status,
            "--mlflow", ids["mlflow"]]
