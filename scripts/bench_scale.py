#!/usr/bin/env python3
"""Scale: one job running and the rest queued behind one GPU, 100 to 10,000 jobs.

    .venv/bin/python scripts/bench_scale.py [--jobs 100 1000 5000 10000] [--idle-window 20]

For each queue length a real daemon (``python -m supervisor.daemon.main``) in a scratch home whose
config.yaml declares one GPU (``gpus: [0]``; no NVML needed). The jobs are written into its
state.db before it starts (submitting 10,000 through the socket is not what is measured), the
first one trains with the test-only stand-in trainer (``YOLO_SUPERVISOR_FAKE_TRAINER``, as in
scripts/bench_micro.py), every other one waits for the GPU. Once the daemon has settled:

- its CPU while nothing changes (psutil, over ``--idle-window`` seconds);
- ``status``, ``status --json`` and ``status NAME`` through the CLI (a real subprocess: its
  Python start-up included), and ``status`` / ``status NAME`` timed at the socket (without it);
- the cost of one placement round, in this process on a Daemon object over the same number of
  jobs (forced: an unchanged round is otherwise skipped), to show how it grows with the queue.

Prints a markdown section (docs/benchmarks.md, Part 5). Targets at 10,000 jobs (issue 20):
``status`` and ``status --json`` under 2 s, one job's status under 100 ms, the daemon under 5 %
of a core while nothing changes, a round at most linear in the queue.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench_common import PYTHON, machine, now_utc, percentile  # noqa: E402
from bench_micro import FAKE, Daemon as BenchDaemon, wait_until  # noqa: E402

from supervisor.control.protocol import Request, connect  # noqa: E402
from supervisor.daemon import scheduling  # noqa: E402
from supervisor.daemon.config import DaemonConfig  # noqa: E402
from supervisor.daemon.core import Daemon  # noqa: E402
from supervisor.demo import make_dataset  # noqa: E402
from supervisor.jobs.spec import parse_spec_text, spec_to_yaml  # noqa: E402
from supervisor.paths import Home  # noqa: E402
from supervisor.store import Store  # noqa: E402

TARGETS = {"status_s": 2.0, "one_job_s": 0.1, "idle_cpu_pct": 5.0}


def spec_template(data: Path) -> str:
    raw = {"name": "TEMPLATE", "gpus": 1,
           "train": {"model": "yolov8n.yaml", "data": str(data), "epochs": 100},
           "restart": {"max_restarts": 100000, "max_no_progress": 100000}}
    return spec_to_yaml(parse_spec_text(yaml.safe_dump(raw), "bench"))


def fill(store: Store, template: str, count: int, first_state: str = "queued") -> list[str]:
    """``count`` jobs, oldest first (the first one gets the GPU)."""
    names = [f"job{i:05d}" for i in range(count)]
    with store.transaction():
        for i, name in enumerate(names):
            store.add_job(name, template.replace("TEMPLATE", name), first_state if i == 0 else "queued",
                          source="bench")
    return names


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def settle(proc: psutil.Process, limit_s: float = 600) -> float:
    """Seconds until the daemon's CPU over 3 s falls under 10 % (start-up: every spec parsed once)."""
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        c0, t0 = cpu_seconds(proc), time.monotonic()
        time.sleep(3)
        if (cpu_seconds(proc) - c0) / (time.monotonic() - t0) < 0.10:
            break
    return time.monotonic() - began


def idle_cpu(proc: psutil.Process, window_s: float) -> float:
    c0, t0 = cpu_seconds(proc), time.monotonic()
    time.sleep(window_s)
    return (cpu_seconds(proc) - c0) / (time.monotonic() - t0) * 100


def socket_times(sock: Path, args: dict, runs: int, daemon: psutil.Process) -> tuple[list[float], float]:
    """Seconds from sending the request to the whole answer (one connection per request), and the
    daemon's CPU seconds per request (what the machine's load does not change much)."""
    times = []
    c0 = cpu_seconds(daemon)
    for _ in range(runs):
        t0 = time.perf_counter()
        with connect(sock) as conn:
            conn.request(Request("status", args)).unwrap()
        times.append(time.perf_counter() - t0)
    return times, (cpu_seconds(daemon) - c0) / runs


def cli_times(home: Path, args: list[str], runs: int, daemon: psutil.Process) -> tuple[list[float], float]:
    """Wall seconds of each CLI run, and the CPU seconds of one run, the CLI's and the daemon's together
    (about what a run takes on a machine where nothing else runs)."""
    times = []
    c0, d0 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_seconds(daemon)
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run([PYTHON, "-m", "supervisor.control.cli", "--home", str(home), "status", *args],
                              capture_output=True, timeout=300)
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise RuntimeError(f"status {args} failed: {done.stderr.decode()[-500:]}")
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime + cpu_seconds(daemon) - d0
    return times, cpu / runs


def measure_daemon(work: Path, count: int, template: str, window_s: float) -> dict:
    home = work / f"home-{count}"
    Home(home).ensure()
    (home / "config.yaml").write_text(yaml.safe_dump({"gpus": [0]}))
    store = Store(home / "state.db")
    names = fill(store, template, count)
    store.close()
    d = BenchDaemon(home, work / "fake_trainer.py")
    try:
        proc = psutil.Process(d.proc.pid)
        wait_until(lambda: (d.store.get_job(names[0]).state == "running"), 900, "the first job running", 0.5)
        settled = settle(proc)
        cpu = idle_cpu(proc, window_s)
        sock = home / "supervisor.sock"
        every, every_cpu = socket_times(sock, {}, 3, proc)
        one, _ = socket_times(sock, {"names": [names[count // 2]]}, 20, proc)
        cli_all, all_cpu = cli_times(home, [], 3, proc)
        cli_json, json_cpu = cli_times(home, ["--json"], 3, proc)
        cli_one, one_cpu = cli_times(home, [names[count // 2]], 5, proc)
        return {"jobs": count, "settle_s": settled, "idle_cpu_pct": cpu, "rss_mb": proc.memory_info().rss / 1e6,
                "status_socket_s": statistics.median(every), "status_daemon_cpu_s": every_cpu,
                "one_socket_p95_s": percentile(one, 95),
                "status_cli_s": statistics.median(cli_all), "json_cli_s": statistics.median(cli_json),
                "one_cli_s": statistics.median(cli_one), "status_cpu_s": all_cpu, "json_cpu_s": json_cpu,
                "one_cpu_s": one_cpu, "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    finally:
        d.close()


def round_cost(work: Path, count: int, template: str, rounds: int = 5) -> float:
    """Median CPU seconds of one forced placement round over ``count`` jobs (one holds the GPU)."""
    home = work / f"rounds-{count}"
    daemon = Daemon(Home(home), DaemonConfig(gpus=[0]))
    try:
        names = fill(daemon.store, template, count)
        daemon.store.update_job(names[0], state="backoff", devices="0", next_start_at=time.time() + 3600)
        daemon.launches.launch = lambda name, actor=None, gpus=(): None  # placement is measured, not launching
        daemon.start_due_jobs()  # parses every spec once (start-up)
        times = []
        for _ in range(rounds):
            daemon.scheduling._last_round = None  # force it: an unchanged round is skipped
            t0 = time.process_time()  # CPU time: the machine's other load changes it far less than wall time
            daemon.start_due_jobs()
            times.append(time.process_time() - t0)
        return statistics.median(times)
    finally:
        daemon.store.close()


def report(rows: list[dict], curve: list[tuple[int, float]], window_s: float, started: str, m: dict) -> str:
    out = [f"Measured by `scripts/bench_scale.py` on {started}: one job training (the stand-in trainer) and the "
           "rest queued behind the daemon's one GPU (`gpus: [0]` in config.yaml; no NVML).", "",
           "Machine: " + "; ".join(f"{k}: {v}" for k, v in m.items() if k != "gpu") + ". A shared machine: "
           "other engineers' test suites ran at the same time, so times carry that load (load average "
           f"at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}).", "",
           "Each time is wall time, then in brackets the CPU seconds it took (the CLI's and the daemon's "
           "together; at the socket the daemon's): about the wall time on a machine with a core to spare.", "",
           f"| queued jobs | daemon CPU while idle ({window_s:g} s) | `status` (CLI) | `status --json` (CLI) | "
           "`status NAME` (CLI) | `status` at the socket | `status NAME` at the socket (p95) | "
           "daemon RSS | start-up until idle | load average |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['jobs']:,} | {r['idle_cpu_pct']:.1f} % | {r['status_cli_s']:.2f} s ({r['status_cpu_s']:.2f} s)"
                   f" | {r['json_cli_s']:.2f} s ({r['json_cpu_s']:.2f} s) | {r['one_cli_s'] * 1000:.0f} ms "
                   f"({r['one_cpu_s'] * 1000:.0f} ms) | {r['status_socket_s']:.2f} s ({r['status_daemon_cpu_s']:.2f} s) | "
                   f"{r['one_socket_p95_s'] * 1000:.1f} ms | {r['rss_mb']:.0f} MB | {r['settle_s']:.0f} s | {r['load']} |")
    out += ["", "One placement round, forced (an unchanged round is skipped), in-process over the same jobs, "
            "in CPU time (median of 5):", "", "| jobs | round | per 1,000 jobs |", "|---|---|---|"]
    for count, seconds in curve:
        out.append(f"| {count:,} | {seconds * 1000:.0f} ms | {seconds * 1000 / count * 1000:.1f} ms |")
    big = rows[-1] if rows else None
    if big:
        verdict = [("`status` in wall time", big["status_cli_s"] < TARGETS["status_s"]),
                   ("`status` in CPU time", big["status_cpu_s"] < TARGETS["status_s"]),
                   ("`status --json` in wall time", big["json_cli_s"] < TARGETS["status_s"]),
                   ("`status --json` in CPU time", big["json_cpu_s"] < TARGETS["status_s"]),
                   ("one job's status at the socket", big["one_socket_p95_s"] < TARGETS["one_job_s"]),
                   ("idle CPU", big["idle_cpu_pct"] < TARGETS["idle_cpu_pct"])]
        out += ["", f"Targets at {big['jobs']:,} jobs: " + ", ".join(f"{what} {'met' if ok else 'MISSED'}"
                                                                   for what, ok in verdict) + "."]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, nargs="+", default=[100, 1000, 5000, 10000])
    p.add_argument("--curve", type=int, nargs="+", default=[100, 500, 1000, 2000, 5000, 10000])
    p.add_argument("--idle-window", type=float, default=20.0)
    p.add_argument("--work", type=Path, default=Path(f"/tmp/yolo-supervisor-scale-{os.getpid()}"))
    args = p.parse_args()
    started, m = now_utc(), machine()
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "fake_trainer.py").write_text(FAKE)
    template = spec_template(make_dataset(args.work / "dataset", images=4, size=32))
    curve = []
    for count in args.curve:
        curve.append((count, round_cost(args.work, count, template)))
        print(f"round over {count} jobs: {curve[-1][1] * 1000:.0f} ms", file=sys.stderr, flush=True)
    rows = []
    for count in args.jobs:
        rows.append(measure_daemon(args.work, count, template, args.idle_window))
        print(f"{count} jobs: {rows[-1]}", file=sys.stderr, flush=True)
    print(report(rows, curve, args.idle_window, started, m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
