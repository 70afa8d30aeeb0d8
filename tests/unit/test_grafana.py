"""The Grafana dashboard in docs/grafana/ queries only metrics the daemon exports."""

import json
import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.daemon.config import DaemonConfig
from supervisor.daemon.core import Daemon
from supervisor.observe.metrics import MetricsService
from supervisor.paths import Home
from supervisor.probes.gpu import FakeGpuProbe

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "yolo-supervisor.json"
METRIC = re.compile(r"\byolo_supervisor_[a-z0-9_]+")


def queries(dashboard: dict) -> list[str]:
    """Every PromQL expression: the panels' targets and the template variables' queries."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return exprs


def exported_names(tmp_path) -> set[str]:
    """The names a real scrape has (families and samples), with a job that has attempts, restarts and a
    checkpoint."""
    daemon = Daemon(Home(tmp_path / "home"), DaemonConfig(), gpu_probe=FakeGpuProbe(device_count=1))
    try:
        daemon.submit("name: g1\ntrain: {model: yolov8n.yaml, data: d.yaml, epochs: 5, device: cpu}\n", "test")
        store = daemon.store
        one = store.start_attempt("g1", 1, pid=10, pid_start_time=1.0, epochs_before=0, resumed_from=None)
        store.mark_first_batch(one, store.get_job("g1").created_at + 1)
        store.add_event("g1", "snapshot", "verified copy of epoch 2 kept")
        store.end_attempt(one, exit_code=None, signal=9, cause="killed", detail="SIGKILL", epochs_after=2)
        store.start_attempt("g1", 2, pid=11, pid_start_time=2.0, epochs_before=2, resumed_from="last.pt")
        store.update_job("g1", state="starting", attempts=2, epochs_done=2)
        text = generate_latest(MetricsService(daemon).registry).decode()
    finally:
        daemon.store.close()
    names = set()
    for family in text_string_to_metric_families(text):  # a family with no sample now is still exported
        names |= {family.name, *(s.name for s in family.samples)}
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_every_metric_the_dashboard_queries_is_exported(tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for expr in queries(dashboard) for name in METRIC.findall(expr)}
    exported = exported_names(tmp_path)
    assert used, "the dashboard queries no yolo_supervisor metric"
    assert used <= exported, f"queried but not exported: {sorted(used - exported)}"
    # and it covers what a team looks at: progress, restarts, goodput, checkpoints, GPUs
    for name in ("yolo_supervisor_job_epoch", "yolo_supervisor_job_restarts_total",
                 "yolo_supervisor_job_down_seconds", "yolo_supervisor_job_checkpoint_age_seconds",
                 "yolo_supervisor_gpu_healthy"):
        assert name in used, name


def test_dashboard_is_importable():
    """What Grafana's import needs: a uid, a title, a datasource input, panels with targets."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["panels"] and all(p["targets"] and p["datasource"]["uid"] == "${DS_PROMETHEUS}"
                                       for p in dashboard["panels"])
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
