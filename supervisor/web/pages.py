"""What the pages draw, from what the control commands return. Pure functions, no I/O.

Secrets never leave here: a job's environment values and notification URLs (config.yaml's, a
job file's ``notify:``, issue 19's ``env:``) are dropped by key wherever they appear, so a
reader sees what ``status`` and ``history`` show and nothing the owner keeps private.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Optional

from supervisor.results_csv import read_results

SECRET_KEYS = frozenset({"env", "env_file", "notify", "urls", "url", "spec_yaml", "token", "password"})
CURVE_GROUPS = (("train losses", "train/"), ("val losses", "val/"), ("mAP", "metrics/mAP"))


def without_secrets(value: Any) -> Any:
    """``value`` with every mapping's secret keys removed, at any depth."""
    if isinstance(value, dict):
        return {k: without_secrets(v) for k, v in value.items() if k not in SECRET_KEYS}
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value


def curves(csv_text: Optional[str], epochs: Optional[int]) -> dict[str, Any]:
    """results.csv as the chart wants it: x = epochs 1..last, one y list per column (None where an
    epoch is missing, a gap as in ``plot``), columns grouped like ``plot``'s panels. Torn or
    non-numeric rows are skipped; a later row for the same epoch wins (a resumed run rewrites it)."""
    header = [h.strip() for h in next(csv.reader(io.StringIO(csv_text or "")), [])]
    if not header or header[0] != "epoch":
        return {"epochs": [], "groups": []}
    parsed, _ = read_results(csv_text or "")
    rows = {e: values for e, values in parsed.items() if all(math.isfinite(v) for v in values.values())}
    last = max([epochs or 0, *rows]) if rows else 0
    xs = list(range(1, last + 1))
    groups = []
    for title, prefix in CURVE_GROUPS:
        cols = [c for c in header[1:] if c.startswith(prefix)]
        series = {c.split("/", 1)[1]: [rows[e][c] if e in rows else None for e in xs] for c in cols}
        if series:
            groups.append({"title": title, "series": series})
    return {"epochs": xs, "groups": groups, "epochs_with_rows": sorted(rows)}


def job_page(history: dict[str, Any], results: dict[str, Any] | str) -> dict[str, Any]:
    """Everything the job page shows but the log: the job as ``status`` shows it, its attempts,
    events, goodput (interruptions and the wall-clock segments) and its curves. ``results`` is the
    ``results`` command's answer, or the reason it was refused."""
    job = history["job"]
    shown = {"job": job, "attempts": history["attempts"], "events": history["events"],
             "goodput": history["goodput"]}
    if isinstance(results, str):
        shown["curves"], shown["curves_error"] = {"epochs": [], "groups": []}, results
    else:
        shown["curves"] = curves(results.get("csv"), job.get("epochs"))
    return without_secrets(shown)
