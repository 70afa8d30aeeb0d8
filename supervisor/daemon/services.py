"""What the daemon shows the outside world around its loop: the control socket, the drop
directory watch, systemd notifications, SIGHUP reloads and Prometheus metrics.

``main`` starts these after building the daemon and stops them after the loop
ends. The parts that touch job state (reload, sd_notify's watchdog ping) run as
housekeeping hooks on the loop thread, so a hung loop stops pinging. So do the
metrics textfile and the record of how far each attempt trained (for goodput).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from supervisor.control.server import ControlServer
from supervisor.control.watcher import DropWatcher
from supervisor.daemon.config import DaemonConfig, load_config
from supervisor.daemon.core import PROCESS_STATES, Daemon
from supervisor.daemon.sdnotify import Notifier
from supervisor.observe.goodput import batches_trained, epochs_trained
from supervisor.observe.logging import configure
from supervisor.observe.metrics import MetricsService
from supervisor.web.service import WebService

# Settings read once at start: a reload reports a change to them but cannot apply it.
RESTART_TO_APPLY = ("socket", "jobs_dir", "metrics_address", "metrics_textfile_dir", "executor", "web")


def socket_path(daemon: Daemon) -> Path:
    return Path(daemon.config.socket) if daemon.config.socket else daemon.home.socket


def jobs_dir(daemon: Daemon) -> Path:
    return Path(daemon.config.jobs_dir) if daemon.config.jobs_dir else daemon.home.inbox


class Services:
    def __init__(self, daemon: Daemon, log_level_override: Optional[str] = None):
        self.daemon = daemon
        self.log_level_override = log_level_override
        self.server = ControlServer(daemon, socket_path(daemon), daemon.config.socket_group)
        self.watcher = DropWatcher(daemon, jobs_dir(daemon))
        self.notifier = Notifier.from_environ()
        self.metrics = MetricsService(daemon)  # ValueError on a bad metrics_address
        self.web: Optional[WebService] = None
        if daemon.config.web is not None:  # the web view (config.yaml web:), in threads of its own
            self.web = WebService(daemon, self.server, daemon.config.web, socket_path(daemon))
        self._ready_sent = False
        self._epochs_noted: dict[str, tuple[int, int]] = {}  # job -> (attempt, epochs) last written
        self._epochs_watched: set[str] = set()  # jobs with a process at the last look

    def start(self) -> None:
        """Socket first: it refuses to start when another daemon already serves this home."""
        self.server.start()
        self.watcher.start()
        try:
            self.metrics.start()  # OSError: the port is taken
            if self.web is not None:
                self.web.start()  # OSError: the port is taken
                self.daemon.web = self.web  # `yolo-supervisorctl web` asks it for a login token
        except BaseException:
            self.watcher.stop()
            self.server.close()
            raise
        self.daemon.hooks += [self.reload_if_requested, self.note_epochs_reached, self.metrics.tick,
                              self.notify_systemd]

    def stop(self) -> None:
        self.notifier.stopping()
        if self.web is not None:
            self.web.stop()
        self.watcher.stop()
        self.server.close()
        self.metrics.stop()

    # -- housekeeping hooks (loop thread) --------------------------------------------
    def notify_systemd(self, daemon: Daemon) -> None:
        """READY=1 after the first housekeeping (reconciliation done), then STATUS and WATCHDOG pings."""
        if not self.notifier.enabled:
            return
        status = _summary(daemon)
        if not self._ready_sent:
            self._ready_sent = self.notifier.ready(status)
        else:
            self.notifier.status(status)
        self.notifier.watchdog()

    def note_epochs_reached(self, daemon: Daemon) -> None:
        """Record how many epochs each attempt has trained, saved or not (goodput's redone epochs).

        The progress file is per attempt and replaced when the next one starts, so
        it is read every tick, including once more after the attempt ended.
        """
        live = {job.name for job in daemon.store.list_jobs(PROCESS_STATES)}
        names, self._epochs_watched = sorted(live | self._epochs_watched), live  # once more after the end
        for name in names:
            progress = daemon.progress_files.read(daemon.home.job_progress(name))[0]  # cached: a stat
            if progress and progress.attempt is not None:
                trained = epochs_trained(progress)
                batches = batches_trained(progress)
                noted = (progress.attempt, trained, batches)
                if (trained or batches) and self._epochs_noted.get(name) != noted:  # heartbeats repeat it
                    self._epochs_noted[name] = noted
                    if trained:
                        daemon.store.note_epochs_reached(name, progress.attempt, trained)
                    if batches:
                        daemon.store.note_batches_reached(name, progress.attempt, *batches)

    def reload_if_requested(self, daemon: Daemon) -> None:
        """SIGHUP: re-read HOME/config.yaml; on any error keep the old config."""
        if not daemon.reload_requested:
            return
        daemon.reload_requested = False
        self.notifier.reloading()
        try:
            new = load_config(daemon.home.config)
            self.server.set_group(new.socket_group)
            if self.web is not None:
                self.web.follow_control_socket()
        except (ValueError, OSError) as err:
            daemon.log.error("config reload failed; keeping the old config", error=str(err))
        else:
            self._apply(daemon, new)
        finally:
            self.notifier.ready(_summary(daemon))

    def _apply(self, daemon: Daemon, new: DaemonConfig) -> None:
        old = daemon.config
        changed = sorted(k for k in DaemonConfig.model_fields if getattr(old, k) != getattr(new, k))
        daemon.config = new
        if self.log_level_override is None:
            configure(new.log_level)
        pending = [k for k in changed if k in RESTART_TO_APPLY]
        daemon.log.info("config reloaded", path=str(daemon.home.config), changed=changed,
                        needs_restart=pending or None)


def _summary(daemon: Daemon) -> str:
    counts = daemon.store.count_by_state()
    if not counts:
        return "no jobs"
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
