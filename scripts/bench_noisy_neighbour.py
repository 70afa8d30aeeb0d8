#!/usr/bin/env python3
"""The noisy neighbour (issue 20): does one hostile user's jobs stall supervision for everyone else?

A real daemon in a temporary home, training replaced by a stand-in trainer (written below; the
daemon runs it through its test hook YOLO_SUPERVISOR_FAKE_TRAINER). One well-behaved job,
``victim``, trains throughout. Two phases, each timed the same way:

- quiet: nothing else runs;
- attack: the hostile jobs run every attack at once: progress files with 400-digit numbers and
  floods of notes, rewritten every second; a pickle-bomb ``last.pt`` (shared references that a
  naive walk expands exponentially) rewritten every 2 s; jobs whose dataset is a FIFO; jobs with
  60 KB data paths; and a client sending ``status`` naming the victim 20,000 times, in a loop.

Printed per phase: the victim's ``status victim`` latency at the socket (p50, p95, max, failures;
timed from connect to answer, without the CLI's start-up), the time from a SIGKILL of the
victim's training to its next attempt training again, the loop lag the daemon reports on
/metrics (``n/a`` where the daemon has no such gauge), and the state database's size and event
count at the end. Some attacks are answered by other parts of issue 20 (range checks, a notes
cap, a pickle budget, paging); the script runs on any version and reports what it sees.

Usage: scripts/bench_noisy_neighbour.py [--seconds 60] [--attacks numbers,bomb,fifo,paths,flood]
       [--bomb-depth 11] [--fifo-jobs 6] [--path-jobs 18]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.control.protocol import Request, connect  # noqa: E402

# The stand-in trainer: run by supervisor.child.train with its globals ``plan`` and ``reporter``.
TRAINER = r'''
import io, json, os, pickle, time, zipfile
from supervisor.child.stop import exit_preempted

job = plan["job"]
save_dir = os.path.join(plan["train"]["project"], plan["train"]["name"])
os.makedirs(os.path.join(save_dir, "weights"), exist_ok=True)


def atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def bomb(depth):
    x = 0
    for _ in range(depth):
        x = [x, x, x, x]  # pickled once, shared by reference: 4**depth nodes for a naive walk
    raw = pickle.dumps({"epoch": 1, "optimizer": {"state": 1}, "train_args": {"bomb": x}}, protocol=2)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("last/data.pkl", raw)
    return buf.getvalue()


reporter.state["first_batch_at"] = time.time()
n = 0
while True:
    if reporter.preempt_requested:
        exit_preempted(reporter, "stand-in trainer")
    n += 1
    if job.startswith("evil-numbers"):
        atomic(plan["progress_file"], json.dumps({
            "first_batch_at": time.time(), "save_dir": save_dir, "epoch": 10 ** 400, "batch": -10 ** 400,
            "batches": 10 ** 400, "phase": "training", "saved_epochs_done": 10 ** 400,
            "notes": [str(n)] * 150_000}).encode())
        time.sleep(1.0)
    elif job.startswith("evil-bomb"):
        reporter.beat(force=True, phase="training", epoch=1, batch=n % 10 + 1, batches=10)
        atomic(os.path.join(save_dir, "weights", "last.pt"), bomb(int(os.environ.get("BENCH_BOMB_DEPTH", "11"))))
        time.sleep(2.0)
    else:
        reporter.beat(force=n == 1, phase="training", epoch=1, batch=n % 10 + 1, batches=10)
        time.sleep(0.1)
'''


ATTACKS = "numbers,bomb,fifo,paths,flood"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bench:
    def __init__(self, work: Path, args):
        self.work, self.args = work, args
        self.home = work / "home"
        self.home.mkdir()
        self.port = free_port()
        (self.home / "config.yaml").write_text(
            f"metrics_address: 127.0.0.1:{self.port}\npreflight_recheck_s: 5\n")
        self.data = self._dataset()
        trainer = work / "trainer.py"
        trainer.write_text(TRAINER)
        env = dict(os.environ, YOLO_SUPERVISOR_FAKE_TRAINER=str(trainer), BENCH_BOMB_DEPTH=str(args.bomb_depth),
                   PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.daemon = subprocess.Popen([sys.executable, "-m", "supervisor.daemon.main", "--home", str(self.home)],
                                       stdout=open(work / "daemon.log", "ab"), stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        self.sock = self.home / "supervisor.sock"
        self._wait(lambda: self.sock.is_socket(), 60, "the control socket")
        self.lag_seen = 0.0
        self.stop_flood = threading.Event()

    def _dataset(self) -> Path:
        root = self.work / "data"
        for sub in ("train", "val"):
            (root / sub).mkdir(parents=True)
        data = root / "data.yaml"
        data.write_text(f"path: {root}\ntrain: train\nval: val\nnames: {{0: a}}\n")
        return data

    def _wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.daemon.poll() is not None:
                raise SystemExit(f"the daemon exited ({self.daemon.returncode}); see {self.work / 'daemon.log'}")
            time.sleep(0.1)
        raise SystemExit(f"timed out waiting for {what}")

    def request(self, cmd: str, args: dict, timeout: float = 30.0):
        with connect(self.sock, timeout=timeout) as conn:
            return conn.request(Request(cmd, args))

    def submit(self, name: str, data: str) -> None:
        # The stand-in trainer never completes an epoch: allow the SIGKILLs without "no progress".
        # A constant 1 s backoff: without progress the delay doubles per kill, and the two phases'
        # restarts must wait the same before they are compared.
        spec = {"name": name, "train": {"model": "yolov8n.yaml", "data": data, "epochs": 2, "device": "cpu"},
                "restart": {"max_no_progress": 100, "max_restarts": 100,
                            "backoff": {"initial": 1, "factor": 1, "max": 1}}}
        path = self.work / f"{name}.yaml"
        import yaml

        path.write_text(yaml.safe_dump(spec))
        resp = self.request("submit", {"source": str(path), "text": path.read_text()}, timeout=120)
        if not resp.ok:
            print(f"  submit {name}: {resp.error}", file=sys.stderr)

    def job(self, name: str):
        db = sqlite3.connect(f"file:{self.home / 'state.db'}?mode=ro", uri=True, timeout=30)
        try:
            row = db.execute("SELECT state, pid, attempts FROM jobs WHERE name = ?", (name,)).fetchone()
        finally:
            db.close()
        return row

    # -- the measurements ----------------------------------------------------------------
    def status_latencies(self, seconds: float) -> tuple[list[float], int]:
        times, failures = [], 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                ok = self.request("status", {"names": ["victim"]}, timeout=30).ok
            except Exception:
                ok = False
            times.append(time.monotonic() - started)
            failures += not ok
            self.sample_lag()
            time.sleep(0.1)
        return times, failures

    def restart_after_sigkill(self) -> float:
        state, pid, attempts = self._wait(lambda: (r := self.job("victim")) and r[0] == "running" and r[1] and r,
                                          120, "the victim running")
        killed, killed_wall = time.monotonic(), time.time()
        os.kill(pid, signal.SIGKILL)
        self._wait(lambda: (r := self.job("victim")) and r[2] > attempts and r[0] == "running", 300,
                   "the victim training again")
        self.restart_steps = self.steps_since(killed_wall)
        return time.monotonic() - killed

    def steps_since(self, wall: float) -> str:
        """Where a restart's time went: the victim's state changes after the kill, in seconds."""
        db = sqlite3.connect(f"file:{self.home / 'state.db'}?mode=ro", uri=True, timeout=30)
        try:
            rows = db.execute("SELECT at, to_state FROM events WHERE job = 'victim' AND at >= ? AND to_state IS NOT NULL"
                              " ORDER BY id", (wall,)).fetchall()
        finally:
            db.close()
        return ", ".join(f"{state} {at - wall:.1f}" for at, state in rows)

    def sample_lag(self) -> None:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("yolo_supervisor_loop_lag_seconds "):
                self.lag_seen = max(self.lag_seen, float(line.split()[1]))
                return
        self.lag_seen = float("nan")

    def flood_status(self) -> None:
        names = ["victim"] * 20_000
        while not self.stop_flood.is_set():
            try:
                self.request("status", {"names": names}, timeout=60)
            except Exception:
                time.sleep(0.5)

    def phase(self, title: str) -> dict:
        self.lag_seen = 0.0
        times, failures = self.status_latencies(self.args.seconds / 2)
        restart = self.restart_after_sigkill()
        more, more_failures = self.status_latencies(self.args.seconds / 2)
        times += more
        q = statistics.quantiles(times, n=20) if len(times) >= 2 else times * 19
        return {"phase": title, "requests": len(times), "failures": failures + more_failures,
                "p50_ms": statistics.median(times) * 1000, "p95_ms": q[18] * 1000, "max_ms": max(times) * 1000,
                "restart_s": restart, "restart_steps": self.restart_steps, "loop_lag_s": self.lag_seen}

    def attack(self) -> None:
        chosen = set(self.args.attacks.split(","))
        if "numbers" in chosen:
            for i in range(self.args.numbers_jobs):
                self.submit(f"evil-numbers{i}", str(self.data))
        if "bomb" in chosen:
            self.submit("evil-bomb", str(self.data))
        if "fifo" in chosen:
            fifo = self.work / "fifo.yaml"
            os.mkfifo(fifo)
            for i in range(self.args.fifo_jobs):
                self.submit(f"evil-fifo{i}", str(fifo))
        if "paths" in chosen:
            long_path = "/nonexistent/" + "p" * 60_000 + "/data.yaml"
            for i in range(self.args.path_jobs):
                self.submit(f"evil-path{i}", long_path)
        if "flood" in chosen:
            threading.Thread(target=self.flood_status, daemon=True).start()

    def database(self) -> tuple[float, int]:
        size = sum(p.stat().st_size for p in self.home.glob("state.db*") if p.name != "state.db.backup")
        db = sqlite3.connect(f"file:{self.home / 'state.db'}?mode=ro", uri=True, timeout=30)
        try:
            events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            event_bytes = db.execute("SELECT COALESCE(SUM(LENGTH(reason) + LENGTH(COALESCE(data, ''))), 0)"
                                     " FROM events").fetchone()[0]
            spec_bytes = db.execute("SELECT COALESCE(SUM(LENGTH(spec_yaml)), 0) FROM jobs").fetchone()[0]
        finally:
            db.close()
        wal = sum(p.stat().st_size for p in self.home.glob("state.db-wal"))
        print(f"state database: {size / 2 ** 20:.1f} MB of which the write-ahead log {wal / 2 ** 20:.1f} MB; "
              f"events' text {event_bytes / 2 ** 20:.2f} MB, the jobs' YAML {spec_bytes / 2 ** 20:.2f} MB")
        return size / 2 ** 20, events

    def close(self) -> None:
        self.stop_flood.set()
        self.daemon.send_signal(signal.SIGTERM)
        try:
            self.daemon.wait(60)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
        subprocess.run([sys.executable, "-c", KILL_JOBS, str(self.home.resolve())], timeout=120)


KILL_JOBS = r'''
import sys, psutil
home = sys.argv[1]
for p in psutil.process_iter():
    try:
        if p.environ().get("YOLO_SUPERVISOR_DAEMON") == home:
            p.kill()
    except psutil.Error:
        pass
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="status sampling per phase")
    parser.add_argument("--bomb-depth", type=int, default=11, help="levels of 4 shared references in last.pt")
    parser.add_argument("--numbers-jobs", type=int, default=2)
    parser.add_argument("--fifo-jobs", type=int, default=6)
    parser.add_argument("--path-jobs", type=int, default=18)
    parser.add_argument("--attacks", default=ATTACKS, help=f"comma-separated, of {ATTACKS}")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-noisy-")
    bench = Bench(Path(tmp), args)
    try:
        bench.submit("victim", str(bench.data))
        rows = [bench.phase("quiet")]
        bench.attack()
        rows.append(bench.phase("attack"))
        size_mb, events = bench.database()
    except BaseException:
        print(f"the run failed; its files (daemon.log, home/) are kept in {tmp}", file=sys.stderr)
        raise
    finally:
        bench.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"noisy neighbour: {os.cpu_count()} CPUs, {args.seconds:g}s of status per phase, attacks {args.attacks} "
          f"(bomb depth {args.bomb_depth}, {args.numbers_jobs} number/notes floods, {args.fifo_jobs} FIFO datasets, "
          f"{args.path_jobs} 60 KB paths, status x20,000 in a loop)")
    print(f"{'phase':8} {'requests':>8} {'failed':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
          f"{'restart s':>9} {'loop lag s':>10}")
    for r in rows:
        print(f"{r['phase']:8} {r['requests']:8d} {r['failures']:6d} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} "
              f"{r['max_ms']:8.1f} {r['restart_s']:9.2f} {r['loop_lag_s']:10.3f}")
    for r in rows:
        print(f"{r['phase']}: the restart's steps (state, seconds after the SIGKILL): {r['restart_steps']}")
    print(f"state database at the end: {size_mb:.1f} MB, {events} events")
    print(json.dumps({"rows": rows, "db_mb": size_mb, "events": events}))


if __name__ == "__main__":
    main()
