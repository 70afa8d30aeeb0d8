"""Chaos: many short attempts of a real CPU training, killed at seeded random moments.

The chaos loop SIGKILLs the training child (at random moments, and inside a save of
last.pt: the moment its atomic save's temp file appears, caught with inotify; a kill that
does not land there fails the test), SIGKILLs the daemon
itself and starts a new one (at random moments, and the moment it starts the next
attempt), and does both at once. A watcher thread samples the process table the
whole time. At the end the suite checks correctness, not speed:

- the job completes and results.csv holds every epoch exactly once;
- there were never two training processes of the job at the same time;
- attempts are numbered 1..k without gaps, each ended, each with its start and
  exit events, and the job's event ids have no gaps (no row lost);
- every resume started from a checkpoint the daemon had just verified (or restored
  from its verified copies), at the epoch that verification reported; no attempt
  started from scratch once a verified copy existed, and none from an older epoch
  than the attempt before it.

``CHAOS_SEED`` picks another sequence of actions (the default one is fixed so a
failure can be replayed; timing still varies from run to run).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import psutil
import pytest

from supervisor import results_csv
from supervisor.contract import read_json
from supervisor.probes.checkpoint import inspect_checkpoint
from supervisor.process.launcher import JOB_ENV
from tests.conftest import DaemonProcess, cpu_job, kill_job_processes, wait_for

pytestmark = pytest.mark.slow

JOB = "chaos"
EPOCHS = 10
ACTIONS = 14                 # chaos actions before the job is left to finish
SEED = int(os.environ.get("CHAOS_SEED", "1128"))
CHILD_MODULE = "supervisor.child.train"


# -- the process table -----------------------------------------------------------------

def training_processes(job: str) -> list[psutil.Process]:
    """Live (non-zombie) training children of ``job``, found by the launcher's environment marker."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if CHILD_MODULE not in (p.info["cmdline"] or []):
                continue
            if p.environ().get(JOB_ENV) == job and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


class Watcher(threading.Thread):
    """Samples the process table every 20 ms; records any moment with two training processes."""

    def __init__(self, job: str):
        super().__init__(name="chaos-watcher", daemon=True)
        self.job = job
        self.halt = threading.Event()
        self.overlaps: list[tuple[float, list[str]]] = []
        self.pids: set[int] = set()
        self.samples = 0

    def run(self) -> None:
        while not self.halt.is_set():
            procs = training_processes(self.job)
            self.samples += 1
            self.pids.update(p.pid for p in procs)
            if len(procs) > 1:
                self.overlaps.append((time.time(), [_describe(p) for p in procs]))
            time.sleep(0.02)


def _describe(p: psutil.Process) -> str:
    try:
        return f"pid {p.pid} attempt {p.environ().get('YOLO_SUPERVISOR_ATTEMPT')} started {p.create_time():.3f}"
    except psutil.Error:
        return f"pid {p.pid} (gone)"


def current_child(job: str) -> Optional[psutil.Process]:
    procs = training_processes(job)
    return procs[0] if len(procs) == 1 else None


def sigkill(proc: psutil.Process) -> bool:
    try:
        proc.send_signal(signal.SIGKILL)
        return True
    except psutil.Error:
        return False


# -- kills at an exact moment: a file is modified ---------------------------------------

# Runs in its own process, so neither this process's GIL (the watcher thread) nor its
# polling delays the kill. It watches DIR with inotify and SIGKILLs VICTIM the moment
# FILE in it is created or modified:
# - last.pt: the child saves it atomically (a temp file ".last.pt.*.partial", fsync, rename;
#   supervisor/child/midepoch.py), as the recovery benchmark's kill-on-write does; FILE is then
#   the temp file's prefix and suffix. The kill lands the moment the temp file is created or
#   written, before the rename; the output says whether it did (the temp file is still there,
#   the save unfinished) and what it left in last.pt (the previous save, whole);
# - train.log: the daemon writes an attempt's banner there just before it spawns the
#   child, so a SIGKILL of the daemon lands in the middle of starting an attempt.
KILL_ON_MODIFY = r"""
import ctypes, os, select, struct, sys
from supervisor.probes.checkpoint import inspect_checkpoint
folder, name, victim, timeout = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), float(sys.argv[4])
after = int(sys.argv[5]) if len(sys.argv) > 5 else None  # only writes made after this pid ended count
prefix, star, suffix = name.partition(b"*")
def matches(n):
    return n.startswith(prefix) and n.endswith(suffix) if star else n == name
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
if fd < 0 or libc.inotify_add_watch(fd, folder.encode(), 0x2 | 0x100) < 0:  # IN_MODIFY | IN_CREATE
    sys.exit("inotify: " + os.strerror(ctypes.get_errno()))
def open_pidfd(pid):
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None
pidfd, after_fd = open_pidfd(victim), (open_pidfd(after) if after else None)
print("ready", flush=True)
if pidfd is None:
    print(f"pid {victim} was gone already", flush=True)
    sys.exit(0)
if after_fd is not None:
    select.select([after_fd], [], [], timeout)
    try:
        os.read(fd, 1 << 20)  # what it wrote itself before it died
    except BlockingIOError:
        pass
while True:
    ready, _, _ = select.select([fd, pidfd], [], [], timeout)
    if not ready or pidfd in ready:
        print(f"no write of {name.decode()} while pid {victim} lived", flush=True)
        sys.exit(0)
    try:
        data, off = os.read(fd, 65536), 0
    except BlockingIOError:
        continue
    while off < len(data):
        _, _, _, n = struct.unpack_from("iIII", data, off)
        written = data[off + 16: off + 16 + n].rstrip(b"\0")
        if matches(written):
            os.kill(victim, 9)
            select.select([pidfd], [], [], 30)
            if not star:
                print(f"killed pid {victim} as {name.decode()} was written", flush=True)
                sys.exit(0)
            temp = os.path.join(folder, written.decode())
            info = inspect_checkpoint(os.path.join(folder, "last.pt"))
            if os.path.exists(temp):
                print(f"killed mid-write: {written.decode()} left unfinished ({os.path.getsize(temp)} bytes); "
                      f"last.pt {info.kind.value} ({info.size} bytes)", flush=True)
            else:
                print(f"missed: the kill came after {written.decode()} was renamed; last.pt {info.kind.value}",
                      flush=True)
            sys.exit(0)
        off += 16 + n
"""
LAST_PT_SAVE = ".last.pt.*.partial"  # the temp file of last.pt's atomic save (midepoch.atomic_write_bytes)
LANDED = re.compile(r"^killed mid-write: .* last\.pt (resumable|missing) ")  # the previous save whole, or none yet


def arm_kill_on_modify(folder: Path, name: str, victim: int, timeout: float,
                       after: Optional[int] = None) -> subprocess.Popen:
    """Start the helper; it is watching once this returns."""
    args = [str(folder), name, str(victim), str(timeout)] + ([str(after)] if after else [])
    helper = subprocess.Popen([sys.executable, "-c", KILL_ON_MODIFY, *args], stdout=subprocess.PIPE, text=True)
    assert helper.stdout.readline() == "ready\n"
    return helper


def helper_result(helper: subprocess.Popen, timeout: float) -> str:
    out, _ = helper.communicate(timeout=timeout)
    assert helper.returncode == 0, out
    return out.strip()


def kill_when_last_pt_is_written(home: Path, proc: psutil.Process, timeout: float) -> str:
    """SIGKILL ``proc`` the moment it starts rewriting last.pt; say where the kill landed."""
    def weights_dir():
        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            return "gone"
        saved = (read_json(home / "jobs" / JOB / "progress.json") or {}).get("save_dir")
        return saved if saved and (Path(saved) / "weights").is_dir() else None
    try:
        found = wait_for(weights_dir, timeout, what="the attempt's weights directory")
    except (AssertionError, psutil.Error):
        return "no weights directory in time"
    if found == "gone":
        return "child ended before its first checkpoint"
    helper = arm_kill_on_modify(Path(found) / "weights", LAST_PT_SAVE, proc.pid, timeout)
    return helper_result(helper, timeout + 60)


# -- the chaos loop --------------------------------------------------------------------

class Chaos:
    def __init__(self, daemon: DaemonProcess, rng: random.Random):
        self.daemon = daemon
        self.rng = rng
        self.log: list[str] = []
        self.child_kills = 0
        self.killed: set[int] = set()
        self.daemon_kills = 0
        self.saves_killed = 0
        self.missed: list[str] = []  # kills meant to land inside a save of last.pt that did not

    def note(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        self.log.append(line)
        print(line, flush=True)

    def finished(self) -> bool:
        job = self.daemon.job(JOB)
        return job is not None and job.state in ("completed", "failed")

    def wait_child(self, timeout: float = 180) -> Optional[psutil.Process]:
        """The job's training process, once it is another one than the last one killed."""
        def found():
            if self.finished():
                return "done"
            self.daemon.assert_alive()
            child = current_child(JOB)
            return child if child is not None and child.pid not in self.killed else None
        got = wait_for(found, timeout, interval=0.05, what="a training child")
        return None if got == "done" else got

    def restart_daemon(self, down_for: float) -> None:
        time.sleep(down_for)
        self.daemon.start()

    def kill_daemon(self) -> None:
        self.daemon.proc.send_signal(signal.SIGKILL)
        self.daemon.proc.wait(30)

    def kill_child(self, child: psutil.Process) -> bool:
        self.killed.add(child.pid)
        return sigkill(child)

    def run(self, actions: int) -> None:
        for n in range(actions):
            child = self.wait_child()
            if child is None:
                self.note("job ended before the chaos ran out")
                return
            action = self.rng.choices(["child", "child_in_save", "daemon", "both", "daemon_at_spawn"],
                                      [4, 3, 2, 2, 2])[0]
            delay = self.rng.uniform(0.5, 8.0)
            time.sleep(delay)
            killed, daemon_killed = False, action in ("daemon", "both")
            if action == "child":
                killed = self.kill_child(child)
                done = "SIGKILL child" if killed else "child already gone"
            elif action == "child_in_save":
                done = kill_when_last_pt_is_written(self.daemon.home, child, timeout=30)
                killed = done.startswith("killed")
                if killed:
                    self.killed.add(child.pid)
                if LANDED.match(done):
                    self.saves_killed += 1
                else:
                    self.missed.append(f"action {n + 1}: {done}")
            elif action == "daemon":
                self.kill_daemon()
                self.restart_daemon(self.rng.uniform(0.0, 3.0))
                done = "SIGKILL daemon, new daemon started"
            elif action == "both":
                self.kill_daemon()
                killed = self.kill_child(child)
                self.restart_daemon(self.rng.uniform(0.0, 3.0))
                done = f"SIGKILL daemon and child ({'killed' if killed else 'child already gone'}), new daemon"
            else:  # the child dies; the daemon is killed the moment it starts the next attempt
                helper = arm_kill_on_modify(self.daemon.home / "jobs" / JOB, "train.log", self.daemon.proc.pid, 30,
                                            after=child.pid)
                killed = self.kill_child(child)
                done = helper_result(helper, 60)
                daemon_killed = done.startswith("killed")
                if daemon_killed:
                    self.daemon.proc.wait(30)
                    self.restart_daemon(self.rng.uniform(0.0, 3.0))
                done += " (child SIGKILLed just before)"
            self.child_kills += killed
            self.daemon_kills += daemon_killed
            self.note(f"action {n + 1}: {action} after {delay:.1f}s of pid {child.pid}: {done}")


# -- the invariants --------------------------------------------------------------------

VERIFIED = re.compile(r"^verified last\.pt: epoch (\d+)$")
RESTORED = re.compile(r"restored verified copy of epoch (\d+)$")
FRESH = re.compile(r"^first start: no run directory yet$|no verified copy: starting fresh")
STARTING = re.compile(r"^attempt (\d+): ")


def check_history(daemon: DaemonProcess) -> None:
    attempts = daemon.attempts(JOB)
    events = daemon.events(JOB)
    history = "\n".join(f"{e.id} {e.kind} {e.to_state or ''} {e.reason}" for e in events)

    # no row lost: attempts 1..k, every one ended; event ids without gaps
    assert [a.number for a in attempts] == list(range(1, len(attempts) + 1)), history
    assert all(a.ended_at is not None and a.cause for a in attempts), \
        [(a.number, a.cause, a.ended_at) for a in attempts]
    ids = [e.id for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "gap in the job's event ids"
    for a in attempts:
        starts = [e for e in events if e.kind == "state" and e.to_state == "starting"
                  and e.reason.startswith(f"attempt {a.number}:")]
        exits = [e for e in events if e.kind == "exit" and e.reason.startswith(f"attempt {a.number}:")]
        assert len(starts) == 1 and len(exits) == 1, f"attempt {a.number}:\n{history}"

    # every resume is from a checkpoint verified (or restored verified) right before the start
    for a in attempts:
        start = next(e for e in events if e.kind == "state" and e.to_state == "starting"
                     and e.reason.startswith(f"attempt {a.number}:"))
        previous_start = max((e.id for e in events if e.kind == "state" and e.to_state == "starting"
                              and e.id < start.id), default=0)
        since = [e.reason for e in events if e.kind == "checkpoint" and previous_start < e.id < start.id]
        decisions = [n for n in since if not n.startswith("results.csv:")]
        assert decisions, f"attempt {a.number} started without a checkpoint decision:\n{history}"
        decision = decisions[-1]
        if a.resumed_from:
            m = VERIFIED.match(decision) or RESTORED.search(decision)
            assert m, f"attempt {a.number} resumed after {decision!r}"
            assert int(m.group(1)) == a.epochs_before, (a.number, decision, a.epochs_before)
            assert a.resumed_from.endswith("/weights/last.pt")
        else:
            assert FRESH.search(decision), f"attempt {a.number} started fresh after {decision!r}"
            assert a.epochs_before == 0
            kept = [e.reason for e in events if e.kind == "snapshot" and e.id < start.id]
            assert not kept, f"attempt {a.number} started from scratch although {kept[-1]!r}"

    # no progress lost: each attempt starts from at least the epoch of the one before
    starts = [a.epochs_before for a in attempts]
    assert starts == sorted(starts), f"an attempt resumed from an older checkpoint: {starts}"


@pytest.fixture
def chaos_daemon(tmp_path):
    d = DaemonProcess(tmp_path / "home")
    yield d
    d.stop(signal.SIGKILL)
    kill_job_processes(JOB)
    assert not d.moves_outside_the_table(), d.moves_outside_the_table()


def test_chaos_kills_never_lose_an_epoch_a_row_or_exclusivity(chaos_daemon, dataset):
    daemon = chaos_daemon
    rng = random.Random(SEED)
    print(f"chaos seed {SEED}", flush=True)
    watcher = Watcher(JOB)
    watcher.start()
    try:
        daemon.start()
        spec = cpu_job(JOB, dataset, epochs=EPOCHS,
                       restart={"max_restarts": 50, "max_no_progress": 50,
                                "backoff": {"initial": 0.2, "max": 1.0, "factor": 2}})
        spec["train"]["batch"] = 4  # 4 batches an epoch: kills land in training, validation and saves
        daemon.drop(spec)
        chaos = Chaos(daemon, rng)
        chaos.run(ACTIONS)
        job = daemon.wait_state(JOB, ["completed", "failed"], timeout=300)
    finally:
        watcher.halt.set()
        watcher.join(5)

    assert job.state == "completed", f"{job.state}: {job.state_reason}"
    assert watcher.samples > 100
    assert not watcher.overlaps, f"two training processes at once: {watcher.overlaps[:3]}"
    assert results_csv.read_epochs(Path(job.run_dir) / "results.csv") == list(range(1, EPOCHS + 1))
    check_history(daemon)
    for copy in (daemon.home / "jobs" / JOB / "checkpoints").glob("epoch-*.pt"):
        assert inspect_checkpoint(copy).is_resumable, copy
    assert chaos.child_kills >= 3 and chaos.daemon_kills >= 1, "the chaos did too little to show anything"
    assert not chaos.missed, f"kills meant to land inside a save of last.pt did not: {chaos.missed}"
    assert chaos.saves_killed >= 1, "no kill landed inside a save of last.pt"


# -- a daemon killed at an exact point of starting an attempt ------------------------------

# Random kills rarely land in the few hundred microseconds between the daemon's Popen and
# its database writes, so these windows get a daemon that SIGKILLs itself right there.
CRASHING_DAEMON = r"""
import os, signal, sys
from supervisor.process import launcher
from supervisor.store import Store
where, number = os.environ["CHAOS_CRASH_AT"], int(os.environ["CHAOS_CRASH_ATTEMPT"])
spawn, start_attempt = launcher.spawn, Store.start_attempt

def spawn_then_die(job, attempt, *args, **kwargs):
    child = spawn(job, attempt, *args, **kwargs)
    if where == "after_spawn" and attempt == number:
        os.kill(os.getpid(), signal.SIGKILL)  # the child runs; nothing about it is recorded
    return child

def record_then_die(self, job, n, *args, **kwargs):
    row = start_attempt(self, job, n, *args, **kwargs)
    if where == "after_attempt_row" and n == number:
        os.kill(os.getpid(), signal.SIGKILL)  # the attempt row is written, the job's state is not
    return row

launcher.spawn, Store.start_attempt = spawn_then_die, record_then_die
from supervisor.daemon.main import main
sys.exit(main(sys.argv[1:]))
"""


def start_crashing_daemon(daemon: DaemonProcess, where: str, attempt: int) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1", CHAOS_CRASH_AT=where, CHAOS_CRASH_ATTEMPT=str(attempt))
    daemon.home.mkdir(parents=True, exist_ok=True)
    with open(daemon.log, "ab") as log:
        daemon.proc = subprocess.Popen([sys.executable, "-c", CRASHING_DAEMON, "--home", str(daemon.home)],
                                       stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    wait_for(lambda: (daemon.home / "supervisor.sock").exists(), 30, what="the crashing daemon's socket")


def running_attempt(daemon: DaemonProcess, number: int, timeout: float = 60):
    def check():
        daemon.assert_alive()
        job = daemon.job(JOB)
        return job if job and job.state == "running" and job.attempts == number else None
    return wait_for(check, timeout, what=f"attempt {number} running")


@pytest.mark.parametrize("where", [
    "after_spawn",
    "after_attempt_row",
])
def test_a_daemon_killed_while_starting_an_attempt_leaves_one_training_and_no_gap(chaos_daemon, monkeypatch, where):
    from tests.conftest import FAKE_TRAINER

    monkeypatch.setenv("YOLO_SUPERVISOR_FAKE_TRAINER", str(FAKE_TRAINER))
    daemon = chaos_daemon
    watcher = Watcher(JOB)
    watcher.start()
    try:
        start_crashing_daemon(daemon, where, attempt=2)
        daemon.drop({"name": JOB, "train": {"model": "yolov8n.yaml", "data": "unused.yaml", "epochs": 5},
                     "restart": {"backoff": {"initial": 0, "max": 0, "factor": 1}}})
        first = running_attempt(daemon, 1)
        os.kill(first.pid, signal.SIGKILL)  # the daemon dies while it starts attempt 2
        daemon.proc.wait(30)
        assert daemon.proc.returncode == -signal.SIGKILL
        daemon.start()
        job = running_attempt(daemon, 2, timeout=30)
        seen = watcher.samples
        wait_for(lambda: watcher.samples >= seen + 25, 30, what="more samples of the process table")
    finally:
        watcher.halt.set()
        watcher.join(5)
    assert not watcher.overlaps, f"two training processes at once: {watcher.overlaps[:3]}"
    assert [p.pid for p in training_processes(JOB)] == [job.pid]
    attempts = daemon.attempts(JOB)
    assert [a.number for a in attempts] == [1, 2]
    assert attempts[0].ended_at is not None and attempts[1].pid == job.pid
