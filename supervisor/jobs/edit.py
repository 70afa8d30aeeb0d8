"""Which train arguments a job may change between attempts, following Ultralytics' resume rules.

A resume takes its arguments from the checkpoint; Ultralytics lets only a few be overridden
(``BaseTrainer.check_resume``) and ignores the rest with a warning. The supervisor passes the
job's values for the overridable ones on every resume, so an edit of one of those really reaches
the resumed run. Three classes (see ../shared/ULTRALYTICS.md):

- safe under resume: applied on the next resume, nothing about the schedule changes;
- changes the schedule: allowed with ``--force``, and the history says why it matters;
- cannot change under a resume: refused (``epochs`` has its own command, ``extend``).

Pure: no I/O. The daemon applies the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from supervisor.jobs.spec import JobSpec, SpecError, normalize_device, parse_spec_text

SAFE = {"data", "workers", "cache", "patience", "plots", "save_period", "val", "time", "channels_last"}
SCHEDULE = {
    "batch": "batch changes the effective learning rate (weight decay and accumulation follow the batch) "
             "and the number of optimizer steps per epoch",
    "imgsz": "imgsz changes what the model learns from and the cost of every step",
    "close_mosaic": "close_mosaic changes the epoch at which augmentation switches off",
    "freeze": "freeze changes which layers train",
    "augmentations": "augmentations change the training data itself",
}
DEVICE_COUNT = "the number of GPUs changes the per-GPU batch and the order of the data (the DDP trap)"
# Every argument Ultralytics applies on resume: the daemon passes the job's value for these.
RESUME_OVERRIDABLE = SAFE | set(SCHEDULE) | {"device"}


class EditRefused(ValueError):
    """The edit cannot be made; the message says why and what to do instead."""


@dataclass(frozen=True)
class Edit:
    spec: JobSpec                         # the job with the changes
    changes: dict[str, tuple[Any, Any]]   # key -> (old, new)
    warnings: list[str]                   # schedule changes accepted with force


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["data=/new.yaml", "workers=4"]`` -> values as YAML reads them (numbers, booleans, strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise EditRefused(f"{item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def plan_edit(spec: JobSpec, values: dict[str, Any], force: bool) -> Edit:
    """The job after ``values``, or EditRefused naming each key that cannot change and why."""
    refused, warnings, changes = [], [], {}
    train = dict(spec.train)
    for key, new in values.items():
        old = train.get(key)
        if key == "epochs":
            refused.append("epochs: change it with `yolo-supervisorctl extend NAME --epochs N`")
        elif key == "device":
            new = normalize_device(new)
            if len(_gpus(new)) != len(_gpus(str(old))) or (_gpus(new) == []) != (_gpus(str(old)) == []):
                (warnings if force else refused).append(f"device: {DEVICE_COUNT}" + ("" if force else
                                                         "; repeat with --force to change it anyway"))
        elif key in SCHEDULE:
            (warnings if force else refused).append(f"{key}: {SCHEDULE[key]}" + ("" if force else
                                                    "; repeat with --force to change it anyway"))
        elif key not in SAFE:
            refused.append(f"{key}: cannot change under a resume (Ultralytics keeps the checkpoint's value); "
                           "submit a new job for a new run")
        if old != new:
            changes[key] = (old, new)
        train[key] = new
    if refused:
        raise EditRefused("; ".join(refused))
    data = spec.model_dump(mode="json")
    data["train"] = train
    # Through the same bounded loader as submit (and as every later read of the stored spec): a
    # value nested 40 deep would be stored, and the job could then never be parsed again.
    source = f"edit of {spec.name}"
    try:
        text = yaml.safe_dump(data, sort_keys=False)
    except (yaml.YAMLError, RecursionError):
        raise SpecError(source, ["(values): not a value a job file can hold"]) from None
    new_spec = parse_spec_text(text, source)
    return Edit(new_spec, changes, warnings)


def _gpus(device: str) -> list[str]:
    return [d for d in str(device).split(",") if d.strip().isdigit()]
