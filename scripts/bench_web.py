#!/usr/bin/env python3
"""The web view with 1,000 jobs: how long the overview and a job page take, and how big they are.

Starts a real daemon (fake trainer: one job runs, the rest wait under max_running: 1) in a temp
home with the web view on, submits N jobs, then times requests through the TCP server with a
session from `yolo-supervisorctl web`. Prints figures; asserts nothing (docs/benchmarks.md).

    PYTHONPATH=. .venv/bin/python scripts/bench_web.py [--jobs 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import FAKE_DATA, FAKE_TRAINER, DaemonProcess, cpu_job, ctl, wait_for, wait_socket  # noqa: E402
from tests.web_client import Web, free_port  # noqa: E402


def timed(web: Web, path: str, runs: int) -> tuple[float, float, int]:
    """(median ms, max ms, bytes) of GET path."""
    times, size = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        resp = web.request("GET", path)
        body = resp.read()
        times.append((time.perf_counter() - start) * 1000)
        assert resp.status == 200, (path, resp.status, body[:200])
        size = len(body)
    return statistics.median(times), max(times), size


def first_event_ms(web: Web, path: str) -> float:
    start = time.perf_counter()
    resp = web.request("GET", path)
    data = b""
    while b"\n\n" not in data:
        data += resp.read1(1 << 20)
    resp.close()
    return (time.perf_counter() - start) * 1000


def kill_jobs_of(home: Path) -> None:
    """The fake training the stopped daemon left running (it re-adopts on a restart): ours only."""
    import psutil

    from supervisor.process.launcher import DAEMON_ENV

    for proc in psutil.process_iter():
        try:
            if proc.environ().get(DAEMON_ENV, "").startswith(str(home)):
                proc.kill()
        except psutil.Error:
            continue


def browser_figures(daemon: DaemonProcess, port: int, jobs: int) -> None:
    """Headless chromium: from opening the overview to every job's row drawn, and one live update."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='bench-chromium-')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(ctl(daemon.home, "web").stdout.splitlines()[0])
        start = time.perf_counter()
        driver.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(driver, 120, 0.05).until(
            lambda d: d.execute_script("return document.querySelectorAll('#jobs tbody tr').length") == jobs)
        took = (time.perf_counter() - start) * 1000
        print(f"browser: overview with {jobs} rows drawn {took:.0f} ms after opening it")
        render = driver.execute_script(
            "const t = performance.now();"
            "showOverview(JSON.parse(JSON.stringify(window.__last || {jobs: [], gpus: []})));"
            "return performance.now() - t;")
        print(f"browser: one redraw of the table: {render:.0f} ms")
    finally:
        driver.quit()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--browser", action="store_true", help="also time headless chromium rendering the overview")
    args = p.parse_args()
    os.environ["YOLO_SUPERVISOR_FAKE_TRAINER"] = str(FAKE_TRAINER)
    root = Path(tempfile.mkdtemp(prefix="bench-web-"))
    daemon = DaemonProcess(root / "home")
    port = free_port()
    daemon.home.mkdir(parents=True)
    (daemon.home / "config.yaml").write_text(f"max_running: 1\nweb:\n  listen: 127.0.0.1:{port}\n")
    daemon.start()
    try:
        wait_socket(daemon)
        start = time.perf_counter()
        for i in range(args.jobs):
            daemon.drop(cpu_job(f"bench{i:04d}", FAKE_DATA, epochs=2), f"bench{i:04d}.yaml")
        wait_for(lambda: len(json.loads(ctl(daemon.home, "status", "--json").stdout or "[]")) == args.jobs, 600,
                 interval=2, what="every job submitted")
        print(f"submitted {args.jobs} jobs in {time.perf_counter() - start:.1f} s")
        web = Web(f"http://127.0.0.1:{port}", timeout=120)
        login = ctl(daemon.home, "web", timeout=120)
        if login.returncode != 0:
            print(f"yolo-supervisorctl web failed: {login.stderr}", file=sys.stderr)
            return 1
        web.login(login.stdout.splitlines()[0])
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"python {platform.python_version()}, load {os.getloadavg()[0]:.2f}")
        for label, path in (("overview JSON (status + gpus)", "/api/overview"),
                            ("a job page's JSON (history + results)", "/api/job/bench0000"),
                            ("the overview page (static HTML)", "/")):
            median, worst, size = timed(web, path, args.runs)
            print(f"{label}: median {median:.0f} ms, max {worst:.0f} ms, {size / 1024:.0f} KiB")
        print(f"overview stream, first event: {first_event_ms(web, '/api/overview/stream'):.0f} ms")
        if args.browser:
            browser_figures(daemon, port, args.jobs)
        start = time.perf_counter()
        done = ctl(daemon.home, "status")
        took = (time.perf_counter() - start) * 1000
        print(f"for comparison, `yolo-supervisorctl status` (a process): {took:.0f} ms, exit {done.returncode}")
    finally:
        daemon.stop()
        kill_jobs_of(daemon.home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
