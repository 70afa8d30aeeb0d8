"""Prometheus metrics: one collector that reads the store at scrape time, served over HTTP
and/or written as a node_exporter textfile.

There are no global gauges to keep in step with the daemon: every scrape (and
every textfile write) asks the store, the progress files and the GPU probe, and
builds the values with the same functions ``status`` uses (``job_view``,
``goodput``). Durations are gauges, not counters, because they are recomputed
from the records each time and may be corrected down by up to a tick (the exact
first-batch time arrives a tick after the batch); ``rate()`` on them would
read that as a reset.

Both outputs are off by default (``metrics_address``, ``metrics_textfile_dir``
in HOME/config.yaml). An address without a host binds the loopback interface.
"""

from __future__ import annotations

import os

import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisor.observe.views import job_view  # the same numbers `status` shows
from supervisor.address import parse_address
from supervisor.jobs.states import JobState

if TYPE_CHECKING:
    from supervisor.daemon.core import Daemon

PREFIX = "yolo_supervisor"
TEXTFILE_NAME = "yolo_supervisor.prom"
TEXTFILE_INTERVAL_S = 5.0  # node_exporter reads it every scrape (15-60 s typically)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ("job",)) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


class SupervisorCollector(Collector):
    """Everything the daemon knows, read when asked."""

    def __init__(self, daemon: "Daemon", clock=time.time):
        self.daemon = daemon
        self.clock = clock
        self.stopped = False  # set when the daemon stops: the last textfile says up 0 and nothing else

    def collect(self) -> Iterator[Metric]:
        up = _gauge("up", "1 while the daemon runs; 0 in the textfile it leaves behind when it stops", ())
        up.add_metric([], 0 if self.stopped else 1)
        yield up
        if self.stopped:
            return
        yield self._loop_metrics()
        yield from self._job_metrics(self.clock())
        yield from self._gpu_metrics()

    def _loop_metrics(self) -> Metric:
        """The daemon watching itself: while the loop is busy, no job and no request is served."""
        lag = _gauge("loop_lag_seconds", "The longest time the daemon's loop was busy in the last minute "
                     "(a warning is logged past 1 s)", ())
        lag.add_metric([], self.daemon.loop_lag.longest())
        return lag

    def _job_metrics(self, now: float) -> Iterator[Metric]:
        states = [s.value for s in JobState]
        m = {
            "jobs": _gauge("jobs", "Jobs in each state", ("state",)),
            "state": _gauge("job_state", "1 for the job's current state, 0 for the others", ("job", "state")),
            "epoch": _gauge("job_epoch", "Epoch under way (1-based; the last epoch once completed)"),
            "epochs": _gauge("job_epochs", "Epochs the job trains in all"),
            "epochs_done": _gauge("job_epochs_done", "Epochs held by the newest verified checkpoint"),
            "attempts": CounterMetricFamily(f"{PREFIX}_job_attempts", "Attempts started", labels=["job"]),
            "restarts": CounterMetricFamily(f"{PREFIX}_job_restarts", "Restarts, by how the attempt before ended",
                                            labels=["job", "cause"]),
            "ckpt_ts": _gauge("job_last_checkpoint_timestamp_seconds",
                              "When the newest verified checkpoint copy was taken (Unix time)"),
            "ckpt_age": _gauge("job_checkpoint_age_seconds", "Seconds since the newest verified checkpoint copy"),
            "wall": _gauge("job_wall_seconds", "Seconds since submission (until the end, once finished)"),
            "startup": _gauge("job_startup_seconds", "Seconds from submission to the first trained batch"),
            "training": _gauge("job_training_seconds", "Seconds spent training (first batch to end of each attempt)"),
            "down": _gauge("job_down_seconds", "Seconds from each death to the next first trained batch"),
            "paused": _gauge("job_paused_seconds", "Seconds not training after a user's stop or restart"),
            "redone": _gauge("job_epochs_redone", "Whole epochs trained a second time after an interruption"),
            "redone_batches": _gauge("job_batches_redone", "Batches trained a second time after an interruption"),
            "bps": _gauge("job_batches_per_second", "Training batches per second in the epoch under way"),
            "eta": _gauge("job_eta_seconds", "Estimated seconds left, from observed epoch times"),
        }
        counts = dict.fromkeys(states, 0)
        for job in self.daemon.store.list_jobs():
            view = job_view(self.daemon, job, now)
            name, gp = job.name, view["goodput"]
            counts[job.state] = counts.get(job.state, 0) + 1
            for state in states:
                m["state"].add_metric([name, state], 1 if state == job.state else 0)
            m["epoch"].add_metric([name], view["epoch"] or 0)
            if view["epochs"] is not None:  # None: the stored spec no longer validates
                m["epochs"].add_metric([name], view["epochs"])
            m["epochs_done"].add_metric([name], view["epochs_done"])
            m["attempts"].add_metric([name], view["attempts"])
            for cause, n in gp["restarts_by_cause"].items():
                m["restarts"].add_metric([name, cause], n)
            checkpoint_at = self.daemon.store.last_event_at(name, "snapshot")
            if checkpoint_at is not None:
                m["ckpt_ts"].add_metric([name], checkpoint_at)
                m["ckpt_age"].add_metric([name], max(0.0, now - checkpoint_at))
            for key in ("wall", "startup", "training", "down", "paused"):
                m[key].add_metric([name], gp[f"{key}_s"])
            m["redone"].add_metric([name], gp["epochs_redone"])
            m["redone_batches"].add_metric([name], gp.get("batches_redone", 0))
            if view["batches_per_s"] is not None:
                m["bps"].add_metric([name], view["batches_per_s"])
            if view["eta_s"] is not None:
                m["eta"].add_metric([name], view["eta_s"])
        for state, n in counts.items():
            m["jobs"].add_metric([state], n)
        yield from m.values()

    def _gpu_metrics(self) -> Iterator[Metric]:
        healthy = _gauge("gpu_healthy", "1 when the GPU is fit to run training (NVML), 0 when not", ("gpu",))
        probe = self.daemon.health.probe
        if probe is not None:
            for index, health in sorted(probe.check(self.daemon.gpu_inventory(), set()).items()):
                healthy.add_metric([str(index)], 1 if health.healthy else 0)
        yield healthy


class MetricsService:
    """Serves the collector over HTTP and writes the textfile; ``tick`` is a housekeeping hook."""

    def __init__(self, daemon: "Daemon", clock=time.monotonic):
        self.daemon = daemon
        self.clock = clock
        self.collector = SupervisorCollector(daemon)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        cfg = daemon.config
        self.address = parse_address(cfg.metrics_address) if cfg.metrics_address else None
        self.textfile = Path(cfg.metrics_textfile_dir) / TEXTFILE_NAME if cfg.metrics_textfile_dir else None
        self._server = None
        self._next_write = 0.0
        self._last_error: Optional[str] = None

    def start(self) -> None:
        """Listen now, so a port in use stops the daemon at start with a clear error."""
        if self.address is not None:
            host, port = self.address
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
            self.daemon.log.info("metrics served", address=f"http://{_netloc(host, port)}/metrics")
        if self.textfile is not None:
            self.textfile.parent.mkdir(parents=True, exist_ok=True)

    def tick(self, daemon: "Daemon") -> None:
        """Write the textfile every ``TEXTFILE_INTERVAL_S`` (loop thread)."""
        if self.textfile is None or self.clock() < self._next_write:
            return
        self._next_write = self.clock() + TEXTFILE_INTERVAL_S
        self.write_textfile()

    def write_textfile(self) -> None:
        """Atomically (temp file + rename): node_exporter never reads half a file."""
        try:
            write_to_textfile(str(self.textfile), self.registry)
            os.chmod(self.textfile, 0o644)  # node_exporter reads it as its own user; the daemon's umask is 0077
            self._last_error = None
        except OSError as err:
            if str(err) != self._last_error:  # once per distinct problem, not every tick
                self._last_error = str(err)
                self.daemon.log.error("metrics textfile not written", path=str(self.textfile), error=str(err))

    def stop(self) -> None:
        """Leave ``up 0`` in the textfile (the store is closed by now) and stop listening."""
        self.collector.stopped = True
        if self.textfile is not None:
            self.write_textfile()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
