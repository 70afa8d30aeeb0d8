#!/usr/bin/env python3
"""Recovery benchmark: yolo-supervisor against what users run today, side by side, in one run.

    .venv/bin/python scripts/bench_recovery.py            # everything; writes docs/benchmarks.md

Systems, each on the same short CPU training (yolov8n from its yaml, a generated dataset,
12 epochs, nothing downloaded):

- ``yolo-supervisor``: the daemon, the job dropped into its inbox;
- ``loop``: ``yolo train ARGS || until yolo train resume model=RUN/weights/last.pt; do sleep 1; done``;
- ``supervisord``: ``autorestart=true`` on the same resume command (``yolo train ARGS`` while no
  last.pt exists, so that the first start works).

Scenarios: no interruption (the baseline); 3 SIGKILLs at random moments; a SIGKILL during the
checkpoint write; a SIGTERM (preemption); a frozen process (SIGSTOP); a missing dataset. The
random moments come from one seeded generator and are the same for every system.

Every training process of every system is timed by the same instrument: a sitecustomize.py on
PYTHONPATH adds Ultralytics callbacks that write time stamps (process start, epoch start, first
batch, checkpoint saved) to a file; the commands themselves are unchanged. The micro-figures
(scripts/bench_micro.py) run after the scenarios and go into the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import (ROOT, PYTHON, YOLO, MARKERS_ENV, alive, ensure_supervisord, kill_tree,  # noqa: E402
                           machine, now_utc, read_markers, start_kill_on_write, supervisord_version,
                           write_hook)

from supervisor import results_csv  # noqa: E402
from supervisor.demo import make_dataset  # noqa: E402
from supervisor.store import Store  # noqa: E402

SYSTEMS = ("yolo-supervisor", "loop", "supervisord")
SCENARIOS = ("baseline", "kill3", "kill_in_write", "sigterm", "sigstop", "no_dataset")
SCENARIO_TITLES = {
    "baseline": "no interruption",
    "kill3": "3 SIGKILLs at random moments",
    "kill_in_write": "SIGKILL during the last.pt write",
    "sigterm": "SIGTERM (preemption)",
    "sigstop": "frozen process (SIGSTOP)",
    "no_dataset": "missing dataset",
}
POLL_S = 0.1


@dataclass
class Settings:
    epochs: int = 12
    images: int = 64
    imgsz: int = 96
    batch: int = 8
    seed: int = 7
    cap_factor: float = 3.0       # an interrupted run not done by cap_factor x baseline has hung
    no_dataset_cap_s: float = 60.0


@dataclass
class Plan:
    """The seeded random moments, drawn once and used for every system."""

    kill_delays: list[float]      # seconds after an attempt's first batch, for each of the 3 kills
    write_epoch: int              # the epoch whose last.pt write is killed
    term_delay: float             # seconds after the first batch
    stop_delay: float

    @classmethod
    def draw(cls, seed: int, epochs: int) -> "Plan":
        rng = random.Random(seed)
        return cls(kill_delays=[round(rng.uniform(3, 12), 2) for _ in range(3)],
                   write_epoch=rng.randint(3, max(3, epochs - 3)),
                   term_delay=round(rng.uniform(6, 16), 2), stop_delay=round(rng.uniform(6, 16), 2))


@dataclass
class Outcome:
    system: str
    scenario: str
    completed: bool
    capped: bool                      # still at it when the cap was reached (else it ended by itself)
    status: str                       # one line: how it ended
    wall_s: Optional[float]           # start to training finished (None: not finished within the cap)
    elapsed_s: float                  # how long the run was watched
    epochs_once: Optional[bool]
    epochs_seen: list[int]
    restarts: int
    epochs_twice: int
    deaths: list[float] = field(default_factory=list)
    death_to_batch: list = field(default_factory=list)  # seconds, None (never) or "done" (not needed)
    notes: list[str] = field(default_factory=list)


# -- the systems ----------------------------------------------------------------------------------

class System:
    """One way of running (and re-running) the training, in its own work directory."""

    name = "?"

    def __init__(self, work: Path, data: Path, s: Settings, hook: Path):
        self.work = work
        self.data = data
        self.s = s
        self.markers = work / "markers.txt"
        self.project = work / "runs"
        self.env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(work / "yolo-config"),
                        PYTHONUNBUFFERED="1", PYTHONPATH=str(hook), **{MARKERS_ENV: str(self.markers)})
        self.proc: Optional[subprocess.Popen] = None
        self.started_at = 0.0
        work.mkdir(parents=True, exist_ok=True)

    def train_args(self) -> list[str]:
        s = self.s
        return ["model=yolov8n.yaml", f"data={self.data}", f"epochs={s.epochs}", f"imgsz={s.imgsz}",
                f"batch={s.batch}", "workers=0", "device=cpu", "plots=False", "amp=False",
                f"project={self.project}", "name=run"]

    def last_pt(self) -> Path:
        return self.project / "run" / "weights" / "last.pt"

    def results_csv(self) -> Optional[Path]:
        return self.project / "run" / "results.csv"

    def start(self) -> None:
        raise NotImplementedError

    def finished(self) -> Optional[tuple[bool, str, float]]:
        """(completed, status, at) once the system is done with the training, else None."""
        raise NotImplementedError

    def stop(self) -> None:
        pids = [m.pid for m in read_markers(self.markers) if m.kind == "start"]
        kill_tree(self.proc.pid if self.proc else None, extra=pids)

    DESCRIPTION = "?"


class Loop(System):
    name = "loop"

    def command(self) -> str:
        fresh = " ".join(shlex.quote(a) for a in [YOLO, "train", *self.train_args()])
        resume = f"{shlex.quote(YOLO)} train resume model={shlex.quote(str(self.last_pt()))}"
        return f"{fresh} || until {resume}; do sleep 1; done"

    DESCRIPTION = "yolo train ARGS || until yolo train resume model=RUN/weights/last.pt; do sleep 1; done"

    def start(self) -> None:
        with open(self.work / "train.log", "ab") as log:
            self.started_at = time.time()
            self.proc = subprocess.Popen(["bash", "-c", self.command()], stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=self.work, start_new_session=True)

    def finished(self):
        rc = self.proc.poll()
        if rc is None:
            return None
        return rc == 0, f"the loop ended (exit {rc})", time.time()


class Supervisord(System):
    name = "supervisord"

    def __init__(self, *args, bin_dir: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.bin_dir = bin_dir
        self.log = self.work / "supervisord.log"

    def command(self) -> str:
        fresh = " ".join(shlex.quote(a) for a in [YOLO, "train", *self.train_args()])
        last = shlex.quote(str(self.last_pt()))
        return f"if [ -e {last} ]; then exec {shlex.quote(YOLO)} train resume model={last}; else exec {fresh}; fi"

    DESCRIPTION = ("[program:train] autorestart=true, command: yolo train resume model=RUN/weights/last.pt "
                   "(yolo train ARGS while there is no last.pt yet; startsecs, startretries default)")

    def start(self) -> None:
        env = ",".join(f'{k}="{self.env[k]}"' for k in ("YOLO_OFFLINE", "YOLO_CONFIG_DIR", "PYTHONUNBUFFERED",
                                                          "PYTHONPATH", MARKERS_ENV))
        conf = self.work / "supervisord.conf"
        command = self.command().replace("'", "'\"'\"'")
        conf.write_text(f"""[supervisord]
nodaemon=true
logfile={self.log}
pidfile={self.work / 'supervisord.pid'}
childlogdir={self.work}
loglevel=info

[unix_http_server]
file={self.work / 'supervisor.sock'}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{self.work / 'supervisor.sock'}

[program:train]
command=/bin/sh -c '{command}'
directory={self.work}
autostart=true
autorestart=true
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile={self.work / 'train.log'}
environment={env}
""")
        self.started_at = time.time()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", MARKERS_ENV)}
        self.proc = subprocess.Popen([str(self.bin_dir / "supervisord"), "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                     cwd=self.work, start_new_session=True)

    EXITED = re.compile(r"^(\S+ \S+),(\d+) INFO exited: train \(exit status 0; expected\)", re.M)

    def finished(self):
        if self.proc.poll() is not None:
            return False, f"supervisord exited {self.proc.returncode}", time.time()
        try:
            text = self.log.read_text()
        except FileNotFoundError:
            return None
        m = self.EXITED.search(text)
        if not m:
            return None
        at = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
        return True, "the program exited 0 (supervisord would now start it again: autorestart=true)", at


class YoloSupervisor(System):
    name = "yolo-supervisor"
    JOB = "bench"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.home = self.work / "home"

    DESCRIPTION = ("yolo-supervisord --home HOME, job file in HOME/inbox; restart backoff 1 s (like the loop's "
                   "sleep 1), health.stall_timeout 20 s, stop_grace 5 s, other settings default")

    def spec(self) -> dict:
        s = self.s
        return {
            "name": self.JOB,
            "train": {"model": "yolov8n.yaml", "data": str(self.data), "epochs": s.epochs, "imgsz": s.imgsz,
                      "batch": s.batch, "workers": 0, "device": "cpu", "plots": False, "amp": False},
            "restart": {"backoff": {"initial": 1.0, "max": 30.0, "factor": 2.0}},
            "health": {"stall_timeout": 20, "stop_grace": 5},
        }

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.work / "daemon.log", "ab") as log:
            self.proc = subprocess.Popen([PYTHON, "-m", "supervisor.daemon.main", "--home", str(self.home)],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.work,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while not (self.home / "supervisor.sock").exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the daemon did not start; see {self.work / 'daemon.log'}")
            time.sleep(0.05)
        inbox = self.home / "inbox"
        tmp = inbox / f".{self.JOB}.tmp"
        tmp.write_text(yaml.safe_dump(self.spec()))
        self.started_at = time.time()
        tmp.rename(inbox / f"{self.JOB}.yaml")

    def _store(self) -> Store:
        return Store(self.home / "state.db")

    def finished(self):
        if self.proc.poll() is not None:
            return False, f"the daemon exited {self.proc.returncode}", time.time()
        store = self._store()
        try:
            job = store.get_job(self.JOB)
            if job is None or job.state not in ("completed", "failed"):
                return None
            at = max((e.at for e in store.events(self.JOB) if e.to_state == job.state), default=time.time())
            return job.state == "completed", f"{job.state}: {job.state_reason}", at
        finally:
            store.close()

    def results_csv(self) -> Optional[Path]:
        store = self._store()
        try:
            job = store.get_job(self.JOB)
            return Path(job.run_dir) / "results.csv" if job and job.run_dir else None
        finally:
            store.close()

    def last_pt(self) -> Path:
        csv = self.results_csv()
        return csv.with_name("weights") / "last.pt" if csv else self.project / "run" / "weights" / "last.pt"

    def attempts(self):
        store = self._store()
        try:
            return store.attempts(self.JOB)
        finally:
            store.close()

    def stop(self) -> None:
        super().stop()
        from supervisor.process.launcher import kill_job_now
        kill_job_now(self.JOB, None)


# -- driving one run ------------------------------------------------------------------------------

class Runner:
    def __init__(self, system: System, scenario: str, plan: Plan, cap_s: float):
        self.sys = system
        self.scenario = scenario
        self.plan = plan
        self.cap_s = cap_s
        self.deaths: list[tuple[float, int]] = []   # (time, pid signalled)
        self.notes: list[str] = []
        self.done: Optional[tuple[bool, str, float]] = None

    # watching
    def markers(self):
        return read_markers(self.sys.markers)

    def deadline_passed(self) -> bool:
        return time.time() - self.sys.started_at > self.cap_s

    def check_done(self) -> bool:
        if self.done is None:
            self.done = self.sys.finished()
        return self.done is not None or self.deadline_passed()

    def wait(self, seconds: float) -> bool:
        """Sleep while watching; False when the run ended or hit its cap meanwhile."""
        end = time.time() + seconds
        while time.time() < end:
            if self.check_done():
                return False
            time.sleep(POLL_S)
        return True

    def next_attempt_in_training(self, after_pid: Optional[int] = None) -> Optional[int]:
        """The pid of the newest training process once it has trained a batch (None: run over)."""
        while not self.check_done():
            ms = self.markers()
            batch = [m for m in ms if m.kind == "batch1" and m.pid != after_pid and alive(m.pid)]
            if batch:
                return batch[-1].pid
            time.sleep(POLL_S)
        return None

    def signal(self, pid: int, sig: int) -> None:
        self.deaths.append((time.time(), pid))
        os.kill(pid, sig)

    # scenarios
    def run(self) -> None:
        self.sys.start()
        try:
            getattr(self, f"do_{self.scenario}")()
            while not self.check_done():
                time.sleep(POLL_S)
        finally:
            self.ended_watch = time.time()
            self.live_at_end = [m.pid for m in self.markers() if m.kind == "start" and alive(m.pid)]
            self.sys.stop()

    def do_baseline(self) -> None:
        pass

    def do_no_dataset(self) -> None:
        pass

    def do_kill3(self) -> None:
        pid = None
        for delay in self.plan.kill_delays:
            pid = self.next_attempt_in_training(after_pid=pid)
            if pid is None or not self.wait(delay):
                self.notes.append("training ended before all 3 kills")
                return
            if alive(pid):
                self.signal(pid, signal.SIGKILL)

    def do_sigterm(self) -> None:
        pid = self.next_attempt_in_training()
        if pid is not None and self.wait(self.plan.term_delay) and alive(pid):
            self.signal(pid, signal.SIGTERM)

    def do_sigstop(self) -> None:
        pid = self.next_attempt_in_training()
        if pid is not None and self.wait(self.plan.stop_delay) and alive(pid):
            self.signal(pid, signal.SIGSTOP)

    def do_kill_in_write(self) -> None:
        epoch = self.plan.write_epoch
        while not self.check_done():
            started = [m for m in self.markers() if m.kind == "epoch" and m.arg == epoch and alive(m.pid)]
            if started:
                break
            time.sleep(0.02)
        else:
            return
        pid = started[-1].pid
        weights = self.sys.last_pt().parent
        helper = start_kill_on_write(weights, pid, timeout=self.cap_s, truncate_if_intact=True)
        while helper.poll() is None:
            if self.check_done():
                helper.kill()
                return
            time.sleep(0.02)
        out = helper.stdout.read().strip()
        when, _, what = out.partition(" ")
        if when != "none":
            self.deaths.append((float(when), pid))
        self.notes.append(f"epoch {epoch} save: {what}")

    # results
    def outcome(self) -> Outcome:
        ms = self.markers()
        starts = [m for m in ms if m.kind == "start"]
        epochs = Counter(m.arg for m in ms if m.kind == "epoch")
        completed, status, at = self.done if self.done else (False, "", 0.0)
        elapsed = self.ended_watch - self.sys.started_at
        if not self.done:
            status = self.hung_status(len(starts))
        csv = self.sys.results_csv()
        seen = results_csv.read_epochs(csv) if csv else []
        once = seen == list(range(1, self.sys.s.epochs + 1))
        to_batch: list = []
        for t, pid in self.deaths:
            nxt = [m.at for m in ms if m.kind == "batch1" and m.at > t and m.pid != pid]
            # a death after the last epoch was saved needs no next batch when the run still completed
            to_batch.append(round(min(nxt) - t, 2) if nxt else ("done" if completed else None))
        return Outcome(
            system=self.sys.name, scenario=self.scenario, completed=bool(completed), capped=not self.done,
            status=status,
            wall_s=round(at - self.sys.started_at, 1) if completed else None, elapsed_s=round(elapsed, 1),
            epochs_once=once if (seen or completed) else None, epochs_seen=seen,
            restarts=max(0, len(starts) - 1), epochs_twice=sum(c - 1 for c in epochs.values() if c > 1),
            deaths=[round(t - self.sys.started_at, 2) for t, _ in self.deaths], death_to_batch=to_batch,
            notes=self.notes + self.error_lines(),
        )

    def hung_status(self, starts: int) -> str:
        frozen = {pid for _, pid in self.deaths}
        if self.scenario == "sigstop" and frozen & set(self.live_at_end):
            return f"hung: the frozen process was still there after {self.cap_s:.0f}s (cap)"
        return f"not finished after {self.cap_s:.0f}s (cap): {starts} training process(es) started"

    def error_lines(self) -> list[str]:
        """The last error line of the training log, to say why a resume kept failing."""
        log = self.sys.work / "train.log"
        if isinstance(self.sys, YoloSupervisor):
            log = self.sys.home / "jobs" / YoloSupervisor.JOB / "train.log"
        try:
            lines = log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        errors = [ln.strip() for ln in lines if re.match(r"^\w*(Error|Exception)\b", ln.strip())]
        return [f"last error in the training log: {errors[-1][:240]}"] if errors else []


def warm_up(work: Path, data: Path, s: Settings) -> None:
    """One unmeasured epoch first: whichever run came first would otherwise pay for cold caches."""
    print("  warm-up: one unmeasured epoch", flush=True)
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(work / "warm-up" / "yolo-config"))
    subprocess.run([YOLO, "train", "model=yolov8n.yaml", f"data={data}", "epochs=1", f"imgsz={s.imgsz}",
                    f"batch={s.batch}", "workers=0", "device=cpu", "plots=False", "amp=False",
                    f"project={work / 'warm-up'}", "name=run"], env=env, capture_output=True, timeout=900)


def run_one(system_name: str, scenario: str, work: Path, data: Path, missing: Path, s: Settings, plan: Plan,
            hook: Path, cap_s: float, svd_bin: Optional[Path]) -> Outcome:
    d = work / f"{system_name}-{scenario}"
    if d.exists():
        import shutil
        shutil.rmtree(d)
    dataset = missing if scenario == "no_dataset" else data
    cls = {"loop": Loop, "supervisord": Supervisord, "yolo-supervisor": YoloSupervisor}[system_name]
    kwargs = {"bin_dir": svd_bin} if cls is Supervisord else {}
    system = cls(d, dataset, s, hook, **kwargs)
    runner = Runner(system, scenario, plan, cap_s)
    print(f"  {system_name:16} {scenario:14} (cap {cap_s:.0f}s) ...", end="", flush=True)
    runner.run()
    out = runner.outcome()
    if isinstance(system, YoloSupervisor):
        out.notes += supervisor_attempt_notes(system)
    print(f" {'completed' if out.completed else 'NOT completed'} in {out.elapsed_s:.0f}s; {out.status}", flush=True)
    return out


def supervisor_attempt_notes(system: YoloSupervisor) -> list[str]:
    """The daemon's own account of each attempt, and its death-to-first-batch from state.db."""
    try:
        attempts = system.attempts()
    except Exception:  # noqa: BLE001 - the database may not exist (daemon failed early)
        return []
    parts = [f"#{a.number} {a.cause or 'open'} ({a.epochs_before}->{a.epochs_after})" for a in attempts]
    gaps = [round(b.first_batch_at - a.ended_at, 2) for a, b in zip(attempts, attempts[1:])
            if a.ended_at and b.first_batch_at]
    notes = [f"attempts: {', '.join(parts)}"] if parts else []
    if gaps:
        notes.append(f"state.db: attempt end -> next first batch {gaps} s")
    return notes


# -- the report ------------------------------------------------------------------------------------

def fmt_completed(o: Outcome) -> str:
    if o.completed:
        return "yes"
    if o.capped:
        return f"**no**: {'hung' if o.scenario == 'sigstop' and o.status.startswith('hung') else 'still retrying'}" \
               f" at the {o.elapsed_s:.0f} s cap"
    return f"no: gave up after {o.elapsed_s:.0f} s"


def fmt_ratio(o: Outcome, base: Optional[float]) -> str:
    if o.wall_s is None:
        return "—"
    if not base:
        return f"{o.wall_s:.0f} s"
    return f"{o.wall_s / base:.2f} ({o.wall_s:.0f} s)"


def fmt_latency(o: Outcome) -> str:
    if not o.death_to_batch:
        return "—"
    vals = ["never" if v is None else "not needed" if v == "done" else f"{v:.1f} s" for v in o.death_to_batch]
    return " / ".join(vals)


def fmt_once(o: Outcome) -> str:
    if o.epochs_once is None:
        return "— (no results.csv)"
    if o.epochs_once:
        return "yes"
    dup = sorted(e for e, c in Counter(o.epochs_seen).items() if c > 1)
    return f"no ({len(o.epochs_seen)} rows" + (f"; twice: {dup}" if dup else "") + ")"


def scenario_table(outcomes: list[Outcome], base: Optional[float]) -> str:
    rows = ["| scenario | system | completed | every epoch once in results.csv | wall time / baseline | "
            "restarts | epochs trained twice | death → next first batch | how it ended |",
            "|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        rows.append(f"| {SCENARIO_TITLES[o.scenario]} | {o.system} | {fmt_completed(o)} | "
                    f"{fmt_once(o)} | {fmt_ratio(o, base)} | {o.restarts} | {o.epochs_twice} | "
                    f"{fmt_latency(o)} | {o.status.replace('|', '/')} |")
    return "\n".join(rows)


def summary(outcomes: list[Outcome]) -> str:
    """One line per system: which scenarios it got through with every epoch exactly once."""
    lines = []
    for system in dict.fromkeys(o.system for o in outcomes):
        mine = [o for o in outcomes if o.system == system and o.scenario not in ("baseline", "no_dataset")]
        good = [SCENARIO_TITLES[o.scenario] for o in mine if o.completed and o.epochs_once]
        bad = [SCENARIO_TITLES[o.scenario] for o in mine if not (o.completed and o.epochs_once)]
        nodata = next((o for o in outcomes if o.system == system and o.scenario == "no_dataset"), None)
        line = f"- **{system}**: finished with every epoch once after {len(good)} of {len(mine)} interruptions"
        if bad:
            line += f" (not after: {', '.join(bad)})"
        if nodata:
            line += ("; missing dataset: " + (f"gave up after {nodata.elapsed_s:.0f} s" if not nodata.capped
                     else f"still retrying at the {nodata.elapsed_s:.0f} s cap ({nodata.restarts} restarts)"))
        lines.append(line + ".")
    return "\n".join(lines)


def notes_section(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        extra = list(o.notes)
        if o.deaths:
            extra.insert(0, "signals at " + ", ".join(f"{t:.1f}" for t in o.deaths) + " s after start")
        if extra:
            lines.append(f"- **{o.system}, {SCENARIO_TITLES[o.scenario]}**: " + "; ".join(extra))
    return "\n".join(lines)


def write_report(path: Path, info: dict, s: Settings, plan: Plan, systems: dict[str, str], outcomes: list[Outcome],
                 base: Optional[float], cap_s: float, micro_md: Optional[str], started: float) -> None:
    machine_lines = "\n".join(f"- {k}: {v}" for k, v in info.items())
    system_lines = "\n".join(f"- **{k}**: `{v}`" for k, v in systems.items())
    text = f"""# Benchmarks

Measured by `scripts/bench_recovery.py` (one command: `./scripts/bench.sh`, or
`.venv/bin/python scripts/bench_recovery.py`) on {now_utc()}; the whole run took
{(time.time() - started) / 60:.0f} minutes. These are measurements of one run on one machine, not
guarantees: the suite checks correctness (tests/e2e/test_chaos.py), this file reports figures.

## Machine

{machine_lines}

The machine was shared: other work ran on the same cores during the measurement, so wall times
carry a few seconds of noise.
"""
    if outcomes:
        text += f"""
## Recovery: yolo-supervisor against what users run today

The training: yolov8n from `yolov8n.yaml`, a generated dataset of {s.images} {s.imgsz}x{s.imgsz} images
with boxes (`supervisor.demo.make_dataset`), `epochs={s.epochs} imgsz={s.imgsz} batch={s.batch}
workers=0 device=cpu`, offline. Each system ran each scenario from an empty directory.

Systems:

{system_lines}

How it was measured:

- **wall time / baseline**: from the moment the system was told to run the job (bash started;
  supervisord started; the job file dropped into the running daemon's inbox) to the end of the
  training process that finished it (the loop's exit; supervisord's log line `exited: train (exit
  status 0; expected)`; the daemon's `completed` event), divided by the baseline: the median of the
  three uninterrupted runs ({f'{base:.1f} s' if base else 'not measured'}; uninterrupted, each system
  runs one plain `yolo train`, so their spread is the launcher's overhead plus the machine's noise).
  A run still going after {s.cap_factor:g}x the baseline ({cap_s:.0f} s; {s.no_dataset_cap_s:.0f} s for
  the missing dataset) was stopped: "still retrying" or "hung" at the cap.
- **restarts**: training processes started after the first one. **epochs trained twice**: epoch starts
  beyond the first for the same epoch, over all processes (an epoch cut off by a kill and trained again
  counts once). Both come from time stamps written inside each training process by Ultralytics
  callbacks added through a `sitecustomize.py` on `PYTHONPATH` (scripts/_bench_common.py): the user's
  commands are unchanged and every system is timed by the same code.
- **death → next first batch**: from the moment the signal was sent to the first trained batch of the
  next training process (same time stamps), for each signal; `never` when none followed.
- **every epoch once in results.csv**: the epochs of the run's results.csv are exactly 1..{s.epochs}.
- **random moments** (seed {s.seed}, the same for every system): the 3 SIGKILLs come {plan.kill_delays} s
  after each attempt's first batch; the SIGTERM {plan.term_delay} s and the SIGSTOP {plan.stop_delay} s
  after the first batch; the write kill in the save of epoch {plan.write_epoch}.
- **SIGKILL during the checkpoint write**: a helper process watches the weights directory with
  inotify and sends SIGKILL the moment last.pt is modified: Ultralytics rewrites last.pt in place
  (`Path.write_bytes`, no temp file), and the truncating open is reported before the bytes follow, so
  the kill lands inside the write and leaves last.pt empty or cut short. If the race is lost (the
  write already finished), the helper cuts last.pt to half at once and the notes say "simulated".
- **SIGTERM**: sent to the training process only (what a preemption notice or `kill` does), not to
  the loop's shell or to supervisord.

In short:

{summary(outcomes)}

{scenario_table(outcomes, base)}

Notes per run:

{notes_section(outcomes)}
"""
    text += micro_md or ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- main -----------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new one under /tmp)")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                   / "yolo-supervisor-bench", help="where supervisord's own venv is kept")
    p.add_argument("--supervisord-bin", default=None, help="a bin directory with supervisord (skips the install)")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--seed", type=int, default=Settings.seed)
    p.add_argument("--epochs", type=int, default=Settings.epochs)
    p.add_argument("--no-micro", action="store_true", help="skip the micro-figures")
    p.add_argument("--only-micro", action="store_true", help="only the micro-figures")
    p.add_argument("--json", type=Path, default=None, help="also write the raw outcomes here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.time()
    work = args.work or Path(f"/tmp/yolo-supervisor-bench-{time.strftime('%Y%m%d-%H%M%S')}")
    work.mkdir(parents=True, exist_ok=True)
    s = Settings(seed=args.seed, epochs=args.epochs)
    info = machine()
    print(f"work directory {work}\nmachine: {info}", flush=True)
    systems = [x for x in args.systems.split(",") if x]
    scenarios = [x for x in args.scenarios.split(",") if x]
    outcomes: list[Outcome] = []
    base = None
    cap_s = 0.0
    plan = Plan.draw(s.seed, s.epochs)
    descriptions = {}
    if not args.only_micro:
        svd_bin = ensure_supervisord(args.cache, args.supervisord_bin) if "supervisord" in systems else None
        data = make_dataset(work / "dataset", images=s.images, size=s.imgsz)
        missing = work / "no-such-dataset" / "data.yaml"
        hook = write_hook(work / "hook")
        for cls in (YoloSupervisor, Loop, Supervisord):
            if cls.name in systems:
                descriptions[cls.name] = cls.DESCRIPTION
        if svd_bin:
            descriptions["supervisord"] = f"{supervisord_version(svd_bin)}: {descriptions['supervisord']}"
        print(f"plan: {plan}", flush=True)
        warm_up(work, data, s)
        # The uninterrupted runs first: the reference is their median (all three are one `yolo train`
        # when nothing goes wrong), and it sets the cap of the others.
        order = [(sc, sy) for sc in scenarios for sy in systems]
        order.sort(key=lambda x: x[0] != "baseline")
        for scenario, system in order:
            if scenario == "baseline":
                cap = 900.0
            elif scenario == "no_dataset":
                cap = s.no_dataset_cap_s
            else:
                cap = cap_s or s.cap_factor * 60.0
            out = run_one(system, scenario, work, data, missing, s, plan, hook, cap, svd_bin)
            outcomes.append(out)
            baselines = [o.wall_s for o in outcomes if o.scenario == "baseline" and o.wall_s]
            if baselines:
                base = statistics.median(baselines)
                cap_s = s.cap_factor * base
        outcomes.sort(key=lambda o: (SCENARIOS.index(o.scenario), systems.index(o.system)))
    micro_md = None
    if not args.no_micro:
        import bench_micro
        micro_md = bench_micro.run_all(work / "micro")
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    info["load average at the end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    write_report(args.out, info, s, plan, descriptions, outcomes, base, cap_s, micro_md, started)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
