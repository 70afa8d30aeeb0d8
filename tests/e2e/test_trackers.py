"""End to end: one run per job in MLflow, W&B and TensorBoard, whatever happens to the training.

One real CPU training with every tracker on at once (a real ``mlflow server`` on loopback with a
SQLite backend, W&B and Comet offline, TensorBoard event files), SIGKILLed twice, preempted once (SIGTERM)
and extended after it completed. Then each tracker holds exactly one run, in its final state, with
every epoch's metrics once. Select it with ``-m trackers``; it needs the tracker packages (the
``test`` extra).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from supervisor.contract import read_json
from supervisor.demo import make_dataset
from tests.conftest import FAKE_DATA, DaemonProcess, cpu_job, ctl, kill_job_processes, wait_for, wait_socket

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("wandb")
pytest.importorskip("tensorboard")
pytest.importorskip("comet_ml")

pytestmark = pytest.mark.trackers

EPOCHS, EXTENDED = 5, 6
METRIC = "metrics/mAP50(B)"


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on loopback, its runs in SQLite."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "mlflow"
    root.mkdir()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"

    def answers():
        assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False
    try:
        wait_for(answers, 180, interval=0.5, what="mlflow server")
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def tracked_daemon(tmp_path):
    d = DaemonProcess(tmp_path / "home")
    yield d
    d.stop()
    kill_job_processes("tracked")
    assert not d.moves_outside_the_table(), d.moves_outside_the_table()


def progress(d: DaemonProcess) -> dict:
    return read_json(d.home / "jobs" / "tracked" / "progress.json") or {}


def kill_in_epoch(d: DaemonProcess, attempt: int, epoch: int, sig: int) -> None:
    """``sig`` to the training of ``attempt`` once it trains inside ``epoch`` (1-based).

    From its first batch: that one is always written to the progress file, later ones at most every
    2 s, and an epoch of this dataset lasts under a second on a quiet machine (waiting for batch 3
    saw none and let the training finish unkilled)."""
    def training():
        p = progress(d)
        d.assert_alive()
        return p if p.get("attempt") == attempt and p.get("phase") == "training" and (p.get("epoch") or 0) >= epoch \
            and (p.get("batch") or 0) >= 1 else None
    p = wait_for(training, 300, interval=0.05, what=f"attempt {attempt} training epoch {epoch}")
    os.kill(p["pid"], sig)


@pytest.mark.slow
def test_one_run_per_tracker_through_kills_a_preemption_and_an_extend(tracked_daemon, mlflow_server, tmp_path,
                                                                    monkeypatch):
    d = tracked_daemon
    # Ultralytics' tracker callbacks switch themselves off under pytest (PYTEST_CURRENT_TEST, which
    # pytest sets anew for each phase): the daemon, and so its trainings, must not inherit it.
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    data = make_dataset(tmp_path / "data", images=48, size=64)
    spec = cpu_job("tracked", data, epochs=EPOCHS, checkpoint_every="1s")
    comet_dir = tmp_path / "comet"
    spec["env"] = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "tracked",
                   "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                   "COMET_MODE": "offline", "COMET_OFFLINE_DIRECTORY": str(comet_dir)}
    spec["settings"] = {"mlflow": True, "wandb": True, "tensorboard": True, "comet": True, "clearml": False,
                        "dvc": False, "raytune": False}
    d.start()
    wait_socket(d)
    d.drop(spec)

    kill_in_epoch(d, 1, 2, signal.SIGKILL)
    kill_in_epoch(d, 2, 3, signal.SIGKILL)
    kill_in_epoch(d, 3, 4, signal.SIGTERM)
    job = d.wait_state("tracked", "completed", timeout=600)
    causes = [a.cause for a in d.attempts("tracked")]
    assert causes[:3] == ["killed", "killed", "preempted"], causes
    assert ctl(d.home, "extend", "tracked", "--epochs", str(EXTENDED)).returncode == 0
    job = d.wait_state("tracked", "completed", timeout=600)
    attempts = len(d.attempts("tracked"))

    status = json.loads(ctl(d.home, "status", "--json").stdout)
    runs = next(j for j in (status if isinstance(status, list) else status["jobs"]) if j["name"] == "tracked")
    runs = runs["trackers"]
    assert set(runs) == {"mlflow", "wandb", "tensorboard", "comet"}, runs
    run_dir = Path(job.run_dir)

    # MLflow: one run, FINISHED, every epoch once (step = 0-based epoch), each attempt and its cause
    client = mlflow.MlflowClient(mlflow_server)
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in found] == [runs["mlflow"]["id"]]
    wait_for(lambda: client.get_run(runs["mlflow"]["id"]).info.status == "FINISHED", 60, what="MLflow run FINISHED")
    steps = [m.step for m in client.get_metric_history(runs["mlflow"]["id"], "metrics/mAP50B")]
    assert sorted(steps) == list(range(EXTENDED)), steps
    params = client.get_run(runs["mlflow"]["id"]).data.params
    recorded = {k: v for k, v in params.items() if k.startswith("supervisor.attempt.")}
    assert len(recorded) == attempts and "killed" in recorded["supervisor.attempt.2"], recorded
    assert runs["mlflow"]["url"].startswith(mlflow_server) and runs["mlflow"]["id"] in runs["mlflow"]["url"]

    # W&B offline: every attempt wrote under the one id; every epoch's metrics once
    wandb_files = [p for p in run_dir.glob("wandb/offline-run-*/run-*.wandb")]
    assert {p.stem.removeprefix("run-") for p in wandb_files} == {runs["wandb"]["id"]}
    assert len(wandb_files) == attempts
    epochs = Counter(row["epoch"] for row in wandb_history(wandb_files) if METRIC in row)
    assert sorted(epochs) == list(range(1, EXTENDED + 1)) and set(epochs.values()) == {1}, epochs

    # TensorBoard: one log directory, every epoch once (step = 1-based epoch), what a reader shows
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    steps = [s.step for s in events.Scalars(METRIC)]
    assert steps == list(range(1, EXTENDED + 1)), steps
    assert runs["tensorboard"]["id"] == str(run_dir)

    # Comet offline: every archive under the one experiment key, no epoch twice. (An offline archive
    # is written at a clean exit only: the killed and preempted attempts' points are not in any.)
    archives = sorted(comet_dir.glob("*.zip"))
    assert archives and {a.stem.split("-")[0] for a in archives} == {runs["comet"]["id"]}, archives
    epochs = Counter(m["epoch"] for m in comet_metrics(archives) if m.get("metricName") == METRIC)
    assert epochs and set(epochs.values()) == {1} and max(epochs) == EXTENDED, epochs

    # where to look: history names the runs
    history = ctl(d.home, "history", "tracked").stdout
    assert runs["mlflow"]["url"] in history and runs["wandb"]["id"] in history


def comet_metrics(archives: list[Path]) -> list[dict]:
    """The metric messages of Comet's offline archives (messages.json: one JSON message a line)."""
    import zipfile

    metrics = []
    for archive in archives:
        with zipfile.ZipFile(archive) as z:
            for line in z.read("messages.json").decode().splitlines():
                message = json.loads(line)
                if message.get("type") == "metric_msg":
                    metrics.append(message["payload"]["metric"])
    return metrics


def wandb_history(paths: list[Path]) -> list[dict]:
    """The history rows of W&B's offline run files (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for path in sorted(paths):
        for data in _log_records(path.read_bytes()):
            record = pb.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def _log_records(raw: bytes, block: int = 32768):
    """wandb's datastore format: a 7-byte ':W&B' header, then 32 KiB blocks of chunks, each with a
    7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    assert raw[:4] == b":W&B", raw[:7]
    pos, parts = 7, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0 and length == 0:  # the block's zero padding
            pos += left
            continue
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield data
        elif kind == 2:
            parts = data
        elif kind == 3:
            parts += data
        elif kind == 4:
            yield parts + data


REPORTING_TRAINER = """
import os, time
reporter.state["first_batch_at"] = time.time()
reporter.beat(force=True, phase="training", epoch=1, batch=1, batches=10,
              trackers={"mlflow": {"id": os.environ["TEST_MLFLOW_RUN"], "url": "http://example.invalid/run"}})
while not reporter.preempt_requested:
    time.sleep(0.05)  # the fake workload's pace, not test synchronisation
from supervisor.child.stop import exit_preempted
exit_preempted(reporter, "reporting trainer")
"""


def test_a_stopped_job_leaves_its_mlflow_run_killed_and_the_next_attempt_continues_it(tracked_daemon, tmp_path,
                                                                                    monkeypatch):
    """The daemon's side with a stand-in trainer that reports a real MLflow run (SQLite store)."""
    d = tracked_daemon
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("stand-in"))
    run_id = run.info.run_id
    trainer = tmp_path / "reporting_trainer.py"
    trainer.write_text(REPORTING_TRAINER)
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(trainer))
    d.start()
    wait_socket(d)
    spec = cpu_job("tracked", FAKE_DATA, epochs=3)
    spec["env"] = {"MLFLOW_TRACKING_URI": uri, "TEST_MLFLOW_RUN": run_id}
    d.drop(spec)
    d.wait_state("tracked", "running")
    wait_for(lambda: any(e.kind == "trackers" for e in d.events("tracked")), 60, what="the run reported")
    status = json.loads(ctl(d.home, "status", "--json").stdout)
    job = next(j for j in (status if isinstance(status, list) else status["jobs"]) if j["name"] == "tracked")
    assert job["trackers"] == {"mlflow": {"id": run_id, "url": "http://example.invalid/run"}}

    assert ctl(d.home, "stop", "tracked").returncode == 0
    d.wait_state("tracked", "stopped")
    wait_for(lambda: client.get_run(run_id).info.status == "KILLED", 120, what="the MLflow run KILLED")
    wait_for(lambda: any(e.reason == "tracker runs closed KILLED" for e in d.events("tracked")), 60,
             what="the finalizer's event")

    assert ctl(d.home, "start", "tracked").returncode == 0
    wait_for(lambda: (d.job("tracked").attempts == 2 and d.job("tracked").state == "running"), 60,
             what="attempt 2 running")
    plan = json.loads((d.home / "jobs" / "tracked" / "attempt.json").read_text())
    assert plan["trackers"]["ids"]["mlflow"] == run_id           # pinned as MLFLOW_RUN_ID by the child
    assert [a["attempt"] for a in plan["trackers"]["attempts"]] == [1, 2]
    assert "stopped" in plan["trackers"]["attempts"][1]["cause"]
    assert "mlflow: run " + run_id in ctl(d.home, "history", "tracked").stdout
