"""Benchmark: 200 queued jobs on 8 GPUs through a real daemon process.

    .venv/bin/python scripts/bench_placement.py [--jobs 200] [--gpus 8] [--hold 2]

No GPU is needed: the daemon's inventory is declared in its config.yaml (`gpus: [0..7]`) and
each job's training is the test-only fake trainer, a real child process that holds its GPU for
``--hold`` seconds and records the device its plan gave it. Jobs mix `gpus: 1`, `gpus: 2` and
named sets. Printed:

- time to place a freed GPU: from the daemon seeing an attempt end (attempts.ended_at) to the
  next attempt started on one of its GPUs (attempts.started_at, after the spawn), for GPUs that
  a waiting job took over; p50 / p95 / max;
- the daemon's own CPU (user+sys, children excluded) per second of wall time, while 8 jobs run and
  192 wait with no churn (steady state), and over the whole run; its peak RSS;
- a check that no GPU was ever given to two attempts at once (from the children's records).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import ROOT, machine, median, now_utc, percentile  # noqa: E402

FAKE_DATA = ROOT / "tests" / "e2e" / "fake_data" / "data.yaml"
TRAINER = """
import json, os, time
def record(kind):
    with open(os.environ["BENCH_RECORDS"], "a") as f:
        f.write(json.dumps({"job": plan["job"], "attempt": plan["attempt"], "device": plan["train"]["device"],
                            "kind": kind, "at": time.time()}) + "\\n")
record("start")
reporter.state["first_batch_at"] = time.time()
end = time.time() + float(os.environ["BENCH_HOLD_S"])
stay = os.environ["BENCH_STAY"]
while time.time() < end or (plan["job"].startswith("steady") and not os.path.exists(stay)):
    reporter.beat(phase="training", epoch=1, batch=1, batches=1)
    time.sleep(0.1)
record("end")
"""


def job_file(name: str, index: int, gpus: int) -> dict:
    spec = {"name": name, "train": {"model": "yolov8n.yaml", "data": str(FAKE_DATA), "epochs": 1}}
    if index % 10 == 9:
        spec["train"]["device"] = str(index % gpus)  # a named GPU
    else:
        spec["gpus"] = 2 if index % 5 == 4 else 1
    return spec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--hold", type=float, default=2.0, help="seconds each fake training holds its GPU")
    p.add_argument("--steady-s", type=float, default=20.0, help="the no-churn window for the steady-state CPU")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="yolo-supervisor-bench-placement-"))
    home, records, stay = work / "home", work / "records.jsonl", work / "stay"
    (work / "trainer.py").write_text(TRAINER)
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump({"gpus": list(range(args.gpus))}))
    env = dict(os.environ, YOLO_SUPERVISOR_FAKE_TRAINER=str(work / "trainer.py"), BENCH_RECORDS=str(records),
               BENCH_HOLD_S=str(args.hold), BENCH_STAY=str(stay), PYTHONPATH=str(ROOT))
    print(f"work directory {work}")
    daemon = subprocess.Popen([sys.executable, "-m", "supervisor.daemon.main", "--home", str(home)],
                              stdout=open(work / "daemon.log", "ab"), stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    proc = psutil.Process(daemon.pid)
    try:
        wait(lambda: (home / "supervisor.sock").exists(), 60, "the daemon's socket")
        # Steady state first: 8 one-GPU jobs that stay, the rest queued behind them.
        steady = [{"name": f"steady{i:03d}", "gpus": 1, "train": {"model": "yolov8n.yaml",
                                                                   "data": str(FAKE_DATA), "epochs": 1}}
                  for i in range(args.gpus)]
        queued = [job_file(f"job{i:03d}", i, args.gpus) for i in range(args.jobs - args.gpus)]
        for spec in steady + queued:
            submit(home, spec)
        wait(lambda: count(home, "running") == args.gpus, 120, "the steady jobs running")
        cpu0, t0 = cpu(proc), time.time()
        time.sleep(args.steady_s)  # the measuring window itself, not synchronisation
        steady_cpu = (cpu(proc) - cpu0) / (time.time() - t0)
        steady_rss = proc.memory_info().rss
        print(f"steady state: {count(home, 'queued')} queued, {count(home, 'running')} running: daemon CPU "
              f"{steady_cpu * 100:.2f}% of a core, RSS {steady_rss / 2**20:.0f} MiB")

        stay.touch()  # let them go: from now on every freed GPU is placed for a waiting job
        churn0, tc = cpu(proc), time.time()
        peak = steady_rss
        while count(home, "completed") < args.jobs:
            peak = max(peak, proc.memory_info().rss)
            if time.time() - tc > 1800:
                raise SystemExit("the run did not finish within 30 minutes")
            time.sleep(0.5)  # sampling RSS, not synchronisation
        churn_cpu = (cpu(proc) - churn0) / (time.time() - tc)
        churn_s = time.time() - tc
    finally:
        daemon.terminate()
        daemon.wait(30)

    latencies = placement_latencies(home / "state.db")
    shared = shared_gpus(records)
    print(f"whole run: {args.jobs} jobs completed in {churn_s:.0f}s after the steady window; daemon CPU "
          f"{churn_cpu * 100:.1f}% of a core, peak RSS {peak / 2**20:.0f} MiB")
    print(f"time to place a freed GPU (n={len(latencies)}): p50 {median(latencies) * 1000:.0f} ms, "
          f"p95 {percentile(latencies, 95) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    print(f"GPUs given to two attempts at once: {len(shared)}" + (f" {shared[:3]}" if shared else ""))
    print(json.dumps({"machine": machine(), "at": now_utc()}, indent=1))
    return 1 if shared else 0


def submit(home: Path, spec: dict) -> None:
    done = subprocess.run([sys.executable, "-m", "supervisor.control.cli", "--home", str(home), "submit", "-"],
                          input=yaml.safe_dump(spec), text=True, capture_output=True, timeout=60)
    if done.returncode != 0:
        raise SystemExit(f"submit {spec['name']}: {done.stderr.strip()}")


def count(home: Path, state: str) -> int:
    with sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True, timeout=5) as db:
        return db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,)).fetchone()[0]


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def placement_latencies(db_path: Path) -> list[float]:
    """Per GPU, attempts in start order: a start after the previous holder ended, by a job that was
    already waiting (submitted before that end), is one placement of a freed GPU."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT a.devices, a.started_at, a.ended_at, j.created_at FROM attempts a "
                          "JOIN jobs j ON j.name = a.job WHERE a.devices IS NOT NULL ORDER BY a.started_at").fetchall()
    last_end: dict[str, float] = {}
    out = []
    for devices, started, ended, created in rows:
        gpus = devices.split(",")
        freed = max((last_end[g] for g in gpus if g in last_end), default=None)
        if freed is not None and created < freed <= started:
            out.append(started - freed)
        for g in gpus:
            last_end[g] = ended or float("inf")
    return out


def shared_gpus(records: Path) -> list[str]:
    spans: dict[str, list[tuple[float, float, str]]] = {}
    seen: dict[tuple[str, int], dict] = {}
    for line in records.read_text().splitlines():
        r = json.loads(line)
        item = seen.setdefault((r["job"], r["attempt"]), {"device": r["device"], "start": r["at"]})
        item["last"] = r["at"]
    for (name, attempt), item in seen.items():
        for g in item["device"].split(","):
            spans.setdefault(g, []).append((item["start"], item["last"], f"{name}#{attempt}"))
    clashes = []
    for g, s in spans.items():
        s.sort()
        clashes += [f"GPU {g}: {a[2]} / {b[2]}" for a, b in zip(s, s[1:]) if b[0] < a[1]]
    return clashes


def wait(pred, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
