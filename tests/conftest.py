"""Shared fixtures: a generated dataset and real checkpoints from a short real training."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def gpu_count() -> int:
    """NVIDIA GPUs NVML sees here (0 without a driver): GPU tests skip on 0."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0


def pump(d, until, timeout: float = 30.0, what: str = "condition"):
    """Run an in-process daemon's loop (housekeeping, then events) until ``until()`` is true."""
    def once():
        d.housekeeping()
        d.step(0.05)
        return until()
    return wait_for(once, timeout, interval=0, what=what)


def settle(d, timeout: float = 60.0):
    """Run an in-process daemon's loop until no worker task is in flight (their results recorded)."""
    def once():
        d.step(0.02)
        return d.workers.in_flight() == 0
    return wait_for(once, timeout, interval=0, what="the daemon's worker tasks")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """data.yaml of 16 generated 64x64 images with coloured boxes."""
    from supervisor.demo import make_dataset  # Pillow: only the tests that train need it

    return make_dataset(tmp_path_factory.mktemp("dataset"), images=16, size=64)


def offline_env(config_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(config_dir), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="session")
def real_checkpoints(tmp_path_factory, dataset) -> dict[str, Path]:
    """Checkpoints from a real 2-epoch CPU training.

    ``save_period=1`` keeps resumable ``epoch0.pt``/``epoch1.pt``; ``last.pt`` is
    stripped by Ultralytics' final_eval (epoch -1, no optimizer).
    """
    cached = os.environ.get(CHECKPOINTS_ENV)
    root = Path(cached) if cached else tmp_path_factory.mktemp("ckpt-run")
    if cached and (root / "run" / "weights" / "last.pt").exists():
        return _checkpoint_files(root)
    cmd = [
        sys.executable, "-c",
        "import sys; from ultralytics import YOLO; "
        "YOLO('yolov8n.yaml').train(data=sys.argv[1], epochs=2, imgsz=64, batch=8, workers=0, "
        "device='cpu', plots=False, amp=False, save_period=1, project=sys.argv[2], name='run', val=True)",
        str(dataset), str(root),
    ]
    subprocess.run(cmd, check=True, env=offline_env(root / "cfg"), capture_output=True, timeout=600)
    return _checkpoint_files(root)


# A folder that keeps ``real_checkpoints`` between pytest sessions (scripts/mutation.sh: one pytest
# session per mutant); made by the first session that finds it empty. Unset: a fresh training.
CHECKPOINTS_ENV = "YOLO_SUPERVISOR_TEST_CHECKPOINTS"


def _checkpoint_files(root: Path) -> dict[str, Path]:
    weights = root / "run" / "weights"
    return {
        "resumable0": weights / "epoch0.pt",
        "resumable1": weights / "epoch1.pt",
        "finished": weights / "last.pt",
        "run_dir": root / "run",
    }


class DaemonProcess:
    """A real ``yolo-supervisord`` in a temp home, observed through its real SQLite database.

    After the test, its state changes are checked against the table (the ``table_check`` fixture)
    unless ``table_check`` is False (a test of the check itself plants a bad one)."""

    def __init__(self, home: Path, table_check: bool = True):
        self.home = home
        self.proc: subprocess.Popen | None = None
        self.log = home / "daemon.log"
        if table_check:
            _DAEMON_HOMES.append(self)

    def start(self, *args: str) -> "DaemonProcess":
        self.home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.daemon.main", "--home", str(self.home), *args],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for(lambda: (self.home / "state.db").exists(), 30, what="daemon database")
        return self

    def store(self):
        from supervisor.store import Store

        return Store(self.home / "state.db")

    def job(self, name: str):
        s = self.store()
        try:
            return s.get_job(name)
        finally:
            s.close()

    def attempts(self, name: str):
        s = self.store()
        try:
            return s.attempts(name)
        finally:
            s.close()

    def events(self, name: str):
        s = self.store()
        try:
            return s.events(name)
        finally:
            s.close()

    def drop(self, spec: dict, filename: str | None = None) -> Path:
        import yaml

        inbox = self.home / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        tmp = inbox / f".{spec['name']}.tmp"
        tmp.write_text(yaml.safe_dump(spec))
        dest = inbox / (filename or f"{spec['name']}.yaml")
        tmp.rename(dest)
        return dest

    def wait_state(self, name: str, states, timeout: float = 300):
        states = {states} if isinstance(states, str) else set(states)

        def check():
            job = self.job(name)
            if job is not None and job.state in states:
                return job
            self.assert_alive()
            return None
        return wait_for(check, timeout, interval=0.1, what=f"job {name} in {sorted(states)}")

    def assert_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")

    def moves_outside_the_table(self) -> list[str]:
        """Every state change this daemon recorded or attempted that jobs/machine.py does not list.

        The table must be the truth: the e2e and chaos tests check it after every daemon run.
        """
        bad = recorded_moves_outside_the_table(self.home / "state.db")
        if self.log.exists():
            bad += [ln for ln in self.log.read_text(errors="replace").splitlines() if "no transition from" in ln]
        return bad

    def stop(self, sig=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def recorded_moves_outside_the_table(db: Path) -> list[str]:
    """The state changes recorded in the database ``db`` that the state machine's table
    (jobs/machine.py) does not list: each is a (from state, event) pair that must lead to its to state."""
    import json

    from supervisor.jobs.machine import TABLE, On
    from supervisor.jobs.states import JobState
    from supervisor.store import Store

    if not db.exists():
        return []
    s = Store(db)
    try:
        bad = []
        for job in s.list_jobs():
            for e in s.events(job.name):
                if e.kind != "state" or not e.from_state or not e.to_state:
                    continue
                on = (json.loads(e.data) if e.data else {}).get("on")
                found = TABLE.get((JobState(e.from_state), On(on))) if on in On._value2member_map_ else None
                if found is None or found.to.value != e.to_state:
                    bad.append(f"{job.name}: {e.from_state}->{e.to_state} on {on} ({e.reason})")
        return bad
    finally:
        s.close()


def in_process_daemon(tmp_path: Path, config=None):
    """A real Daemon over a temporary home, in this process, for a fixture to ``yield from``: its
    store closed afterwards, and whatever attempt it left running killed."""
    from supervisor.daemon.config import DaemonConfig
    from supervisor.daemon.core import Daemon
    from supervisor.paths import Home
    from supervisor.process import launcher

    d = Daemon(Home(tmp_path / "home"), config or DaemonConfig())
    yield d
    for run in list(d.running.values()):
        launcher.kill_job_now(run.child.job, run.child, daemon_id=d.daemon_id)
    d.store.close()


# Every daemon the running test started: a DaemonProcess, or an in-process Daemon (its home).
_DAEMON_HOMES: list = []


class TableCheck:
    """What ``table_check`` found attempted in process; a test that makes an illegal move on purpose
    takes it back with ``planted``."""

    def __init__(self) -> None:
        self.attempted: list[str] = []

    def planted(self, move: str) -> None:
        self.attempted.remove(move)


@pytest.fixture(autouse=True)
def table_check(monkeypatch):
    """After every test, each state change of every daemon it ran, in a process or in this one, is
    checked against the state machine's table (jobs/machine.py): the moves recorded in its database and its log, and,
    in process, every move attempted through ``Daemon.transition`` (an illegal one raises there).

    Torn down after the test's other fixtures (it is set up first), so after their daemons stopped;
    a fixture whose database goes away in its own teardown (a tmpfs) checks before that."""
    from supervisor.daemon.core import Daemon
    from supervisor.jobs.machine import TABLE
    from supervisor.jobs.states import JobState

    _DAEMON_HOMES.clear()
    check = TableCheck()
    real_init, real_transition = Daemon.__init__, Daemon.transition

    def init(self, home, *args, **kwargs):
        real_init(self, home, *args, **kwargs)
        _DAEMON_HOMES.append(home)

    def transition(self, name, on, reason, actor=None, **fields):
        job = self.store.get_job(name)
        old = JobState(job.state) if job is not None else None
        if old is not None and (old, on) not in TABLE:
            check.attempted.append(f"{name}: {old.value} on {on.value} ({reason})")
        return real_transition(self, name, on, reason, actor, **fields)

    monkeypatch.setattr(Daemon, "__init__", init)
    monkeypatch.setattr(Daemon, "transition", transition)
    yield check
    bad = list(check.attempted)
    for d in _DAEMON_HOMES:
        bad += d.moves_outside_the_table() if isinstance(d, DaemonProcess) else recorded_moves_outside_the_table(d.db)
    assert not bad, f"state changes outside the table (jobs/machine.py): {bad}"


_BASETEMP: list[str] = []  # this pytest session's temporary root: every test daemon's home is below it


@pytest.fixture(scope="session", autouse=True)
def _session_basetemp(tmp_path_factory):
    _BASETEMP.append(str(tmp_path_factory.getbasetemp().resolve()))


def kill_job_processes(name: str) -> None:
    """Test cleanup: no training child of ``name`` may outlive its test. Only this session's: a
    job named alike in another test run on the machine (its daemon's home elsewhere) is left alone."""
    import psutil

    from supervisor.process.launcher import DAEMON_ENV, job_processes

    mine = []
    for proc in job_processes(name):
        try:
            home = proc.environ().get(DAEMON_ENV, "")
        except psutil.Error:
            continue
        if not _BASETEMP or not home or home.startswith(_BASETEMP[0]):
            mine.append(proc)
    for proc in mine:
        try:
            proc.kill()
        except psutil.Error:
            pass
    wait_for(lambda: not any(_alive(p) for p in mine), 10, what=f"the processes of test job {name} to end")


def _alive(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def daemon(tmp_path):
    d = DaemonProcess(tmp_path / "home")
    yield d
    d.stop()
    for job in (d.home / "jobs").glob("*") if (d.home / "jobs").exists() else []:
        kill_job_processes(job.name)
    assert not d.moves_outside_the_table(), d.moves_outside_the_table()


def cpu_job(name: str, data: Path, epochs: int = 4, **extra) -> dict:
    """A real, tiny CPU training job."""
    spec = {
        "name": name,
        "train": {"model": "yolov8n.yaml", "data": str(data), "epochs": epochs, "imgsz": 64, "batch": 8,
                  "workers": 0, "device": "cpu", "plots": False, "amp": False},
        "restart": {"backoff": {"initial": 0.5, "max": 2, "factor": 2}},
    }
    spec.update(extra)
    return spec


# -- control plane helpers ------------------------------------------------------------
def wait_socket(daemon: DaemonProcess, path: Path | None = None, timeout: float = 30.0) -> Path:
    """Until the daemon's control socket exists (it appears after the database)."""
    sock = path or daemon.home / "supervisor.sock"

    def ready():
        daemon.assert_alive()
        return sock.is_socket()
    wait_for(ready, timeout, what=f"control socket {sock}")
    return sock


def ctl(home: Path | None, *args: str, timeout: float = 60, text: bool = True) -> subprocess.CompletedProcess:
    """Run ``yolo-supervisorctl`` as a real subprocess (``text=False``: bytes, no newline translation)."""
    cmd = [sys.executable, "-m", "supervisor.control.cli"]
    if home is not None:
        cmd += ["--home", str(home)]
    return subprocess.run([*cmd, *args], capture_output=True, text=text, timeout=timeout)


FAKE_TRAINER = Path(__file__).parent / "e2e" / "fake_trainer.py"
# A dataset YAML whose paths exist (the preflight checks them) for jobs the fake trainer runs.
FAKE_DATA = Path(__file__).parent / "e2e" / "fake_data" / "data.yaml"


@pytest.fixture
def fake_daemon(daemon, monkeypatch):
    """The ``daemon`` fixture with training replaced by tests/e2e/fake_trainer.py (test-only hook)."""
    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(FAKE_TRAINER))
    return daemon


# -- a full disk ------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MiB tmpfs mounted for the test, to be filled up: a real ENOSPC, not a mock.

    Mounting needs root (CAP_SYS_ADMIN), which CI and this project's machines have; elsewhere
    the tests that use it skip and say why.
    """
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full-disk test mounts a small tmpfs, which needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill_disk(folder: Path) -> Path:
    """Write zeros into ``folder`` until the filesystem says ENOSPC; return the filler file."""
    import errno

    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * (1 << 20)
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]  # fill the last blocks too
                if not chunk:
                    return filler
