"""Chaos: many short attempts of a real CPU training, killed at seeded random moments.

The chaos loop SIGKILLs the training child (at random moments, and right when
Ultralytics starts rewriting last.pt, caught with inotify), SIGKILLs the daemon
itself and starts a new one, and does both at once. A watcher thread samples the
process table the whole time. At the end the suite checks correctness, not speed:

- the job completes and results.csv holds every epoch exactly once;
- there were never two training processes of the job at the same time;
- attempts are numbered 1..k without gaps, each ended, each with its start and
  exit events, and the job's event ids have no gaps (no row lost);
- every resume started from a checkpoint the daemon had just verified (or restored
  from its verified copies), at the epoch that verification reported.

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
from supervisor.child.progress import read_json
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


# -- a kill during the checkpoint write ------------------------------------------------

# Runs in its own process, so neither this process's GIL (the watcher thread) nor its
# polling delays the kill: inotify reports Ultralytics' truncating open of last.pt
# before the 30 MB follow, and the SIGKILL lands inside ``Path.write_bytes`` (or, when
# the race is lost, just after it). It says which, from the file as the kill left it.
KILL_ON_WRITE = r"""
import ctypes, os, select, struct, sys
from supervisor.probes.checkpoint import inspect_checkpoint
weights, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_CLOEXEC)
if fd < 0 or libc.inotify_add_watch(fd, weights.encode(), 0x2) < 0:  # IN_MODIFY
    sys.exit("inotify: " + os.strerror(ctypes.get_errno()))
pidfd = os.pidfd_open(pid)
print("ready", flush=True)
while True:
    ready, _, _ = select.select([fd, pidfd], [], [], timeout)
    if not ready or pidfd in ready:
        print("no write of last.pt before the child ended", flush=True)
        sys.exit(0)
    data, off = os.read(fd, 65536), 0
    while off < len(data):
        _, _, _, n = struct.unpack_from("iIII", data, off)
        if data[off + 16: off + 16 + n].rstrip(b"\0") == b"last.pt":
            os.kill(pid, 9)
            select.select([pidfd], [], [], 30)
            info = inspect_checkpoint(os.path.join(weights, "last.pt"))
            when = "mid-write" if info.kind.value == "corrupt" else "right after the write"
            print(f"killed {when}: last.pt {info.kind.value} ({info.size} bytes)", flush=True)
            sys.exit(0)
        off += 16 + n
"""


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
    helper = subprocess.Popen(
        [sys.executable, "-c", KILL_ON_WRITE, str(Path(found) / "weights"), str(proc.pid), str(timeout)],
        stdout=subprocess.PIPE, text=True)
    out, _ = helper.communicate(timeout=timeout + 60)
    assert helper.returncode == 0 and out.startswith("ready\n"), out
    return out.removeprefix("ready\n").strip()


# -- the chaos loop --------------------------------------------------------------------

class Chaos:
    def __init__(self, daemon: DaemonProcess, rng: random.Random):
        self.daemon = daemon
        self.rng = rng
        self.log: list[str] = []
        self.child_kills = 0
        self.daemon_kills = 0

    def note(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        self.log.append(line)
        print(line, flush=True)

    def finished(self) -> bool:
        job = self.daemon.job(JOB)
        return job is not None and job.state in ("completed", "failed")

    def wait_child(self, timeout: float = 180) -> Optional[psutil.Process]:
        def found():
            if self.finished():
                return "done"
            self.daemon.assert_alive()
            return current_child(JOB)
        got = wait_for(found, timeout, interval=0.05, what="a training child")
        return None if got == "done" else got

    def restart_daemon(self, down_for: float) -> None:
        time.sleep(down_for)
        self.daemon.start()

    def kill_daemon(self) -> None:
        self.daemon.proc.send_signal(signal.SIGKILL)
        self.daemon.proc.wait(30)

    def run(self, actions: int) -> None:
        for n in range(actions):
            child = self.wait_child()
            if child is None:
                self.note("job ended before the chaos ran out")
                return
            action = self.rng.choices(["child", "child_in_save", "daemon", "both"], [4, 3, 2, 2])[0]
            delay = self.rng.uniform(0.5, 8.0)
            time.sleep(delay)
            if action == "child":
                killed = sigkill(child)
                done = "SIGKILL child" if killed else "child already gone"
            elif action == "child_in_save":
                done = kill_when_last_pt_is_written(self.daemon.home, child, timeout=30)
                killed = done.startswith("killed")
            elif action == "daemon":
                killed = False
                self.kill_daemon()
                self.restart_daemon(self.rng.uniform(0.0, 3.0))
                done = "SIGKILL daemon, new daemon started"
            else:
                self.kill_daemon()
                killed = sigkill(child)
                self.restart_daemon(self.rng.uniform(0.0, 3.0))
                done = f"SIGKILL daemon and child ({'killed' if killed else 'child already gone'}), new daemon"
            self.child_kills += killed
            self.daemon_kills += action in ("daemon", "both")
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


@pytest.fixture
def chaos_daemon(tmp_path):
    d = DaemonProcess(tmp_path / "home")
    yield d
    d.stop(signal.SIGKILL)
    kill_job_processes(JOB)


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
