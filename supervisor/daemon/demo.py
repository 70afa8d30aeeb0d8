"""The embedded demo: a real CPU training, SIGKILLed once it has saved epoch 2, resumed, completed.

Shows what the daemon is for in about a minute, with nothing downloaded.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

from supervisor import results_csv
from supervisor.daemon.core import Daemon
from supervisor.demo import demo_job, make_dataset
from supervisor.jobs.states import JobState
from supervisor.observe.logging import configure
from supervisor.paths import Home


def run_demo(home_dir: Path | None = None, epochs: int = 5, kill_after_epoch: int = 2) -> int:
    home = Home(home_dir or Path(tempfile.mkdtemp(prefix="yolo-supervisor-demo-"))).ensure()
    configure("info")
    print(f"demo home: {home.root}", flush=True)
    data = make_dataset(home.root / "dataset")
    daemon = Daemon(home)
    daemon.submit(yaml.safe_dump(demo_job(data, epochs=epochs)), source="embedded demo", actor="demo")
    injector = _KillOnce(kill_after_epoch)
    daemon.hooks.append(injector)
    daemon.start()
    deadline = time.monotonic() + 900
    while not JobState(daemon.store.get_job("demo").state).is_final and time.monotonic() < deadline:
        daemon.housekeeping()
        daemon.step(0.5)
    return _report(daemon, home)


class _KillOnce:
    """Housekeeping hook: SIGKILL the training child once it has saved ``after`` epochs.

    The daemon sees a save at its next tick, and training goes on meanwhile, so the killed
    attempt may have saved another epoch before the signal lands. What it really saved is
    known once the daemon has verified its checkpoint at the attempt's end (``epochs_after``,
    the figure ``history`` shows): that is what the demo reports.
    """

    def __init__(self, after: int):
        self.after, self.done = after, False
        self.killed: tuple[int, int] | None = None  # (attempt number, pid)
        self.reported = False

    def __call__(self, daemon: Daemon) -> None:
        if self.done:
            self._report_checkpoint(daemon)
            return
        run = daemon.running.get("demo")
        job = daemon.store.get_job("demo")
        if run is None or job.epochs_done < self.after:
            return
        attempt = daemon.store.attempts("demo")[-1]
        print(f"\n>>> demo: SIGKILL to the training process (pid {run.child.pid}, attempt {attempt.number}); "
              f"the daemon had seen epoch {job.epochs_done} saved <<<\n", flush=True)
        run.child.popen.send_signal(signal.SIGKILL)
        self.killed = (attempt.number, run.child.pid)
        self.done = True

    def _report_checkpoint(self, daemon: Daemon) -> None:
        """Once the killed attempt has ended and the next one started: what was really saved and
        where training picks up (an epoch, or a batch inside one after a mid-epoch save)."""
        if self.reported or self.killed is None:
            return
        number, pid = self.killed
        attempts = {a.number: a for a in daemon.store.attempts("demo")}
        ended, nxt = attempts.get(number), attempts.get(number + 1)
        if ended is None or ended.ended_at is None or ended.epochs_after is None or nxt is None:
            return
        batch = getattr(nxt, "batch_before", None) or 0
        where = f"epoch {nxt.epochs_before + 1}" + (f", batch {batch + 1}" if batch else "")
        print(f"\n>>> demo: the killed attempt (pid {pid}) ended ({ended.cause}); its verified checkpoint held "
              f"epoch {ended.epochs_after}; attempt {nxt.number} resumes at {where} <<<\n", flush=True)
        self.reported = True


def _report(daemon: Daemon, home: Home) -> int:
    job = daemon.store.get_job("demo")
    print(f"\njob demo: {job.state} ({job.state_reason})")
    for a in daemon.store.attempts("demo"):
        print(f"  attempt {a.number}: pid {a.pid} cause {a.cause} epochs saved {a.epochs_before} -> {a.epochs_after}"
              f"{'  resumed from ' + a.resumed_from if a.resumed_from else ''}")
    if job.run_dir:
        epochs = results_csv.read_epochs(Path(job.run_dir) / "results.csv")
        print(f"  results.csv epochs: {epochs}")
    print(f"  log: {home.job_log('demo')}")
    daemon.shutdown()
    return 0 if job.state == JobState.COMPLETED.value else 1


if __name__ == "__main__":
    sys.exit(run_demo())
