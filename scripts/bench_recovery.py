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
random moments come from one seeded generator and are the same for every system. They are
training positions, not times: "epoch 5, batch 3 of 8" (drawn as a fraction of the epoch), so a
faster or slower machine runs the same experiment. Each signal is sent once a live training
process reports that batch done; a row where a planned interruption did not land while training
ran (the run finished first, or the position went by unseen) is reported as INVALID, not as a
result.

The long-epoch family (``--scenarios long_epoch``): at least 200 batches per epoch (1,680
generated 64 px images, batch 8), a SIGKILL at 70 % of epoch 2 and a SIGTERM at 50 % of epoch
3 in one run, against its own uninterrupted baseline. For yolo-supervisor the job sets
``checkpoint_every`` to a tenth of the baseline's measured epoch time, where the installed job
spec has that key. Reported per system: batches trained twice, images of the interrupted epochs
never trained, wall time / baseline, death -> next first batch.

``--scenarios`` takes scenario names and the family names ``short`` (the six above),
``long_epoch`` and ``all`` (the default).

Every training process of every system is timed by the same instrument: a sitecustomize.py on
PYTHONPATH adds Ultralytics callbacks that write time stamps (process start, epoch start, first
batch, checkpoint saved, and every trained batch with its epoch, index and image files) to a
file; the commands themselves are unchanged. The micro-figures
(scripts/bench_micro.py) run after the scenarios and go into the same file.
"""

from __future__ import annotations

import argparse
import dataclasses
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

from _bench_common import (ROOT, PYTHON, YOLO, MARKERS_ENV, Marker, MarkerReader, alive,  # noqa: E402
                           ensure_supervisord, kill_tree, machine, now_utc, read_markers, start_kill_on_write,
                           supervisord_version, write_hook)

from supervisor import results_csv  # noqa: E402
from supervisor.demo import make_dataset  # noqa: E402
from supervisor.store import Store  # noqa: E402

SYSTEMS = ("yolo-supervisor", "loop", "supervisord")
SHORT = ("baseline", "kill3", "kill_in_write", "sigterm", "sigstop", "no_dataset")
LONG = ("long_baseline", "long_kill_term")
SCENARIOS = SHORT + LONG
FAMILIES = {"short": SHORT, "long_epoch": LONG, "all": SCENARIOS}
BASELINES = ("baseline", "long_baseline")
SCENARIO_TITLES = {
    "baseline": "no interruption",
    "kill3": "3 SIGKILLs at random moments",
    "kill_in_write": "SIGKILL during the last.pt write",
    "sigterm": "SIGTERM (preemption)",
    "sigstop": "frozen process (SIGSTOP)",
    "no_dataset": "missing dataset",
    "long_baseline": "long epochs, no interruption",
    "long_kill_term": "long epochs: SIGKILL at 70 % of epoch 2, SIGTERM at 50 % of epoch 3",
}
POLL_S = 0.1
POINT_POLL_S = 0.01  # while waiting for a planned position: a batch takes tens of ms on CPU


def family(scenario: str) -> str:
    return "long_epoch" if scenario in LONG else "short"


def expand_scenarios(spec: str) -> list[str]:
    out: list[str] = []
    for name in (x.strip() for x in spec.split(",") if x.strip()):
        if name in FAMILIES:
            out += [s for s in FAMILIES[name] if s not in out]
        elif name in SCENARIOS:
            out += [name] if name not in out else []
        else:
            raise SystemExit(f"unknown scenario {name!r}: one of {', '.join((*FAMILIES, *SCENARIOS))}")
    return out


@dataclass
class Settings:
    """One family's training. The defaults are the short scenarios'."""

    epochs: int = 12
    images: int = 64
    imgsz: int = 96
    batch: int = 8
    val: bool = True
    seed: int = 7
    cap_factor: float = 3.0       # an interrupted run not done by cap_factor x baseline has hung
    no_dataset_cap_s: float = 60.0
    checkpoint_every: Optional[float] = None  # yolo-supervisor's job key, when set (seconds)

    @classmethod
    def long_epoch(cls, seed: int, epochs: int = 4, images: int = 1680) -> "Settings":
        return cls(epochs=epochs, images=images, imgsz=64, batch=8, val=False, seed=seed)

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.images // self.batch)


@dataclass(frozen=True)
class Point:
    """An interruption planned at a training position: once batch ``index(nb)`` (0-based) of
    ``epoch`` (1-based) has been trained, send ``signal``."""

    epoch: int
    fraction: float
    signal: str = "SIGKILL"

    def index(self, batches: int) -> int:
        return min(batches - 1, max(0, int(round(self.fraction * batches)) - 1))

    def __str__(self) -> str:
        return f"{self.signal} at {self.fraction:.0%} of epoch {self.epoch}"


@dataclass
class Plan:
    """The seeded random positions, drawn once and used for every system."""

    kills: list[Point]            # the 3 SIGKILLs, in increasing epochs
    write_epoch: int              # the epoch whose last.pt write is killed
    term: Point
    stop: Point
    long: list[Point]             # the long-epoch run: SIGKILL at 70 % of epoch 2, SIGTERM at 50 % of epoch 3

    @classmethod
    def draw(cls, seed: int, epochs: int) -> "Plan":
        rng = random.Random(seed)
        kill_epochs = sorted(rng.sample(range(2, max(5, epochs)), 3))
        kills = [Point(e, round(rng.uniform(0.15, 0.85), 2)) for e in kill_epochs]
        return cls(kills=kills, write_epoch=rng.randint(3, max(3, epochs - 3)),
                   term=Point(rng.randint(3, max(3, epochs - 3)), round(rng.uniform(0.2, 0.8), 2), "SIGTERM"),
                   stop=Point(rng.randint(3, max(3, epochs - 3)), round(rng.uniform(0.2, 0.8), 2), "SIGSTOP"),
                   long=[Point(2, 0.70, "SIGKILL"), Point(3, 0.50, "SIGTERM")])

    def points(self, scenario: str) -> list[Point]:
        return {"kill3": self.kills, "sigterm": [self.term], "sigstop": [self.stop],
                "long_kill_term": self.long}.get(scenario, [])


@dataclass
class Landing:
    """Where a planned interruption really happened (or why it did not)."""

    planned: str
    landed: bool
    pid: Optional[int] = None
    at: Optional[float] = None      # unix time the signal was sent
    epoch: Optional[int] = None     # the training position it was sent at (the last batch trained)
    index: Optional[int] = None
    batches: Optional[int] = None
    why: str = ""                   # when not landed: "not reached" (the run was over) or "missed"

    def where(self) -> str:
        if not self.landed:
            return f"{self.planned}: {self.why}"
        if self.index is None:  # a kill inside a save: no batch position
            return f"{self.planned}: sent during the save of epoch {self.epoch}"
        return f"{self.planned}: sent after batch {self.index + 1}/{self.batches} of epoch {self.epoch}"


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
    invalid: Optional[str] = None     # why the row is not a result (a planned interruption did not land)
    landings: list[dict] = field(default_factory=list)
    batches: dict = field(default_factory=dict)  # batch accounting, see batch_accounting()
    saves: dict = field(default_factory=dict)    # yolo-supervisor's mid-epoch saves, as its child reports them


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
                        PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(hook), str(ROOT)]),
                        **{MARKERS_ENV: str(self.markers)})  # ROOT: this checkout, not an editable install's
        self.proc: Optional[subprocess.Popen] = None
        self.started_at = 0.0
        work.mkdir(parents=True, exist_ok=True)

    def train_args(self) -> list[str]:
        s = self.s
        return ["model=yolov8n.yaml", f"data={self.data}", f"epochs={s.epochs}", f"imgsz={s.imgsz}",
                f"batch={s.batch}", "workers=0", "device=cpu", "plots=False", "amp=False",
                *([] if s.val else ["val=False"]), f"project={self.project}", "name=run"]

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

    def sample(self) -> None:
        """Called while the run is watched: what the system itself reports (nothing, here)."""

    def saves(self) -> dict:
        return {}

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
        keys = ("YOLO_OFFLINE", "YOLO_CONFIG_DIR", "PYTHONUNBUFFERED", "PYTHONPATH", MARKERS_ENV, "TRACE_BATCHES")
        env = ",".join(f'{k}="{self.env[k]}"' for k in keys if k in self.env)
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
    # Unique per benchmark process: the daemon finds a job's processes machine-wide by the job's
    # name (its environment marker) and kills strays before each launch, so two benchmarks (or a
    # benchmark and a test) with the same job name on one machine would kill each other's training.
    JOB = f"bench-{os.getpid()}"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.home = self.work / "home"

    DESCRIPTION = ("yolo-supervisord --home HOME, job file in HOME/inbox; restart backoff 1 s (like the loop's "
                   "sleep 1), health.stall_timeout 20 s, stop_grace 5 s, other settings default")

    def spec(self) -> dict:
        s = self.s
        spec = {
            "name": self.JOB,
            "train": {"model": "yolov8n.yaml", "data": str(self.data), "epochs": s.epochs, "imgsz": s.imgsz,
                      "batch": s.batch, "workers": 0, "device": "cpu", "plots": False, "amp": False,
                      **({} if s.val else {"val": False})},
            "restart": {"backoff": {"initial": 1.0, "max": 30.0, "factor": 2.0}},
            "health": {"stall_timeout": 20, "stop_grace": 5},
        }
        if s.checkpoint_every is not None:
            spec["checkpoint_every"] = s.checkpoint_every
        return spec

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
            if job is not None and job.state == "held" and not store.attempts(self.JOB):
                # the preflight found the dataset missing: held, nothing started, waiting for it
                at = max((e.at for e in store.events(self.JOB) if e.to_state == "held"), default=time.time())
                return False, f"held, no process started: {job.state_reason}", at
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

    SAMPLE_S = 0.1
    _sampled_at = 0.0

    def sample(self) -> None:
        """Collect the mid-epoch saves the training child reports in its progress file
        (``last_midepoch``: seconds and bytes of the last save; issue 9), at most every 0.1 s."""
        now = time.monotonic()
        if now - self._sampled_at < self.SAMPLE_S:
            return
        self._sampled_at = now
        try:
            progress = json.loads((self.home / "jobs" / self.JOB / "progress.json").read_text())
        except (OSError, ValueError):
            return
        last = progress.get("last_midepoch") if isinstance(progress, dict) else None
        if isinstance(last, dict) and last.get("at") is not None:
            if not hasattr(self, "_saves"):
                self._saves = {}
            self._saves[(progress.get("pid"), last["at"])] = last

    def saves(self) -> dict:
        found = list(getattr(self, "_saves", {}).values())
        seconds = [float(x["seconds"]) for x in found if x.get("seconds") is not None]
        sizes = [int(x["size"]) for x in found if x.get("size") is not None]
        if not found:
            return {}
        return {"count": len(found), "median_s": round(statistics.median(seconds), 3) if seconds else None,
                "max_s": round(max(seconds), 3) if seconds else None, "total_s": round(sum(seconds), 2),
                "size_bytes": int(statistics.median(sizes)) if sizes else None}

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
        self.landings: list[Landing] = []
        self.notes: list[str] = []
        self.invalid: list[str] = []
        self.done: Optional[tuple[bool, str, float]] = None
        self.reader = MarkerReader(system.markers)

    # watching
    def markers(self) -> list[Marker]:
        return self.reader.read()

    def deadline_passed(self) -> bool:
        return time.time() - self.sys.started_at > self.cap_s

    def check_done(self) -> bool:
        self.sys.sample()
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

    def signal(self, pid: int, sig: int) -> None:
        self.deaths.append((time.time(), pid))
        os.kill(pid, sig)

    def interrupt_at(self, point: Point) -> Landing:
        """Send ``point.signal`` to the live training process that has just trained the planned
        batch of the planned epoch. Not landed: the run ended first ("not reached"), or a live
        process was seen past that position without having been seen at it ("missed")."""
        sig = getattr(signal, point.signal)
        signalled = {pid for _, pid in self.deaths}
        last: dict[int, Marker] = {}  # each process's newest epoch/batch marker
        seen = 0
        while not self.check_done():
            ms = self.markers()
            for m in ms[seen:]:
                if m.kind in ("b", "epoch"):
                    last[m.pid] = m
            seen = len(ms)
            for pid, m in list(last.items()):
                if m.kind != "b" or pid in signalled or m.epoch is None or m.index is None:
                    continue
                nb = m.batches or self.sys.s.batches_per_epoch
                target = point.index(nb)
                if m.epoch < point.epoch or (m.epoch == point.epoch and m.index < target):
                    continue
                if not alive(pid):
                    del last[pid]
                    continue
                if m.epoch > point.epoch or m.index > target + max(2, nb // 20):
                    return Landing(str(point), False, pid, why=f"missed: first seen at batch {m.index + 1}/{nb} "
                                                               f"of epoch {m.epoch}")
                self.signal(pid, sig)
                return Landing(str(point), True, pid, self.deaths[-1][0], m.epoch, m.index, nb)
            time.sleep(POINT_POLL_S)
        return Landing(str(point), False, why="not reached: the run was over before it")

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

    do_long_baseline = do_baseline

    def do_no_dataset(self) -> None:
        pass

    def do_points(self) -> None:
        for point in self.plan.points(self.scenario):
            self.landings.append(self.interrupt_at(point))
            if not self.landings[-1].landed:
                return  # the rest cannot land either (the run is over), or the experiment is off plan

    do_kill3 = do_sigterm = do_sigstop = do_long_kill_term = do_points

    def do_kill_in_write(self) -> None:
        epoch = self.plan.write_epoch
        planned = f"SIGKILL inside the epoch {epoch} save"
        while not self.check_done():
            started = [m for m in self.markers() if m.kind == "epoch" and m.arg == epoch and alive(m.pid)]
            if started:
                break
            time.sleep(0.02)
        else:
            self.landings.append(Landing(planned, False, why="not reached: the run was over before it"))
            return
        pid = started[-1].pid
        weights = self.sys.last_pt().parent
        helper = start_kill_on_write(weights, pid, timeout=self.cap_s, truncate_if_intact=True)
        while helper.poll() is None:
            if self.check_done():
                helper.kill()
                self.landings.append(Landing(planned, False, pid, why="not reached: the run was over before it"))
                return
            time.sleep(0.02)
        out = helper.stdout.read().strip()
        when, _, what = out.partition(" ")
        if when != "none":
            self.deaths.append((float(when), pid))
            self.landings.append(Landing(planned, True, pid, float(when), epoch, None, None))
        else:
            self.landings.append(Landing(planned, False, pid, why=f"not reached: {what}"))
        self.notes.append(f"epoch {epoch} save: {what}")

    # results
    def validity(self, completed: bool) -> Optional[str]:
        """Why this row is not a result, or None. A planned interruption that did not land
        makes the row invalid when the system still finished (the experiment was not the one
        planned) or when its position went by unseen; one that was not reached because the
        system had already stopped training for good is the system's failure, a result."""
        for landing in self.landings:
            if landing.landed:
                continue
            if landing.why.startswith("missed") or completed:
                return landing.where()
        return None

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
            notes=self.notes + self.error_lines(), invalid=self.validity(bool(completed)),
            landings=[dataclasses.asdict(x) for x in self.landings],
            batches=batch_accounting(ms, self.landings, dataset_images(self.sys.data)),
            saves=self.sys.saves(),
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


# -- counting trained batches (from the `b` markers) -----------------------------------------------

def dataset_images(data_yaml: Path) -> Optional[set[str]]:
    """The stems of the training images (make_dataset's layout: images/train beside data.yaml)."""
    d = data_yaml.parent / "images" / "train"
    if not d.is_dir():
        return None
    return {p.stem for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")}


def batch_accounting(ms: list[Marker], landings: list[Landing], images: Optional[set[str]]) -> dict:
    """What every trained batch of every process of the run adds up to.

    - batches trained twice, per epoch: batches trained in that epoch (all processes together)
      beyond the epoch's number of batches; the same figure by position, (epoch, batch index)
      pairs trained more than once, is kept too (it differs when a resume renumbers batches);
    - images trained twice, per epoch: images (batch["im_file"]) trained more than once in it;
    - for each landed interruption, in the epoch it hit: the above, and the images of that epoch
      never trained (the dataset's training images minus those trained in it).
    - epoch_train_s: per process and epoch, the epoch's start to its last trained batch.
    """
    b = [m for m in ms if m.kind == "b" and m.epoch is not None]
    if not b:
        return {}
    per_epoch = Counter(m.epoch for m in b)
    nb: dict[int, int] = {}
    for m in b:
        if m.batches:
            nb[m.epoch] = max(nb.get(m.epoch, 0), m.batches)
    twice = {e: max(0, c - nb.get(e, c)) for e, c in per_epoch.items()}
    by_position = Counter((m.epoch, m.index) for m in b)
    position_twice = Counter()
    for (e, _), c in by_position.items():
        position_twice[e] += c - 1
    files_known = all(m.files is not None for m in b)
    seen: dict[int, Counter] = {}
    if files_known:
        for m in b:
            seen.setdefault(m.epoch, Counter()).update(m.files)
    images_twice = {e: sum(c - 1 for c in cnt.values() if c > 1) for e, cnt in seen.items()}
    per_interruption = []
    for landing in landings:
        if not landing.landed or landing.epoch is None:
            continue
        e = landing.epoch
        per_interruption.append({
            "interruption": landing.planned, "epoch": e, "at_batch": landing.index,
            "batches": nb.get(e), "batches_twice": twice.get(e, 0), "positions_twice": position_twice.get(e, 0),
            "images_twice": images_twice.get(e) if files_known else None,
            "images_never": len(images - set(seen.get(e, ()))) if files_known and images else None,
        })
    epoch_s = []
    starts = {(m.pid, m.arg): m.at for m in ms if m.kind == "epoch"}
    last_batch: dict[tuple[int, int], float] = {}
    for m in b:
        last_batch[(m.pid, m.epoch)] = m.at
    for key, at in last_batch.items():
        if key in starts and nb.get(key[1]) and sum(1 for m in b if (m.pid, m.epoch) == key) >= nb[key[1]]:
            epoch_s.append(round(at - starts[key], 2))  # only whole epochs
    return {
        "batches_per_epoch": nb, "batches_twice_total": sum(twice.values()),
        "batches_twice_by_epoch": {e: v for e, v in sorted(twice.items()) if v},
        "images_twice_total": sum(images_twice.values()) if files_known else None,
        "files_recorded": files_known, "per_interruption": per_interruption, "epoch_train_s": sorted(epoch_s),
    }


def checkpoint_every_for(epoch_s: float, fraction: float = 0.1) -> tuple[Optional[float], str]:
    """yolo-supervisor's ``checkpoint_every`` for a tenth of the measured epoch, if this build's job
    spec has the key (issue 9); the value as the spec accepts it (seconds, else whole seconds)."""
    from supervisor.jobs.spec import JobSpec, SpecError, parse_spec

    if "checkpoint_every" not in JobSpec.model_fields:
        return None, ("not set: this build's job spec has no `checkpoint_every` key, so yolo-supervisor "
                      "ran with epoch-level checkpoints only")
    wanted = round(epoch_s * fraction, 1)
    base = {"name": "probe", "train": {"model": "yolov8n.yaml", "data": "/dev/null", "epochs": 1}}
    for value in (wanted, max(1, int(round(wanted)))):
        try:
            parse_spec({**base, "checkpoint_every": value})
        except SpecError as err:
            if "checkpoint_every" in str(err):
                continue
        return value, (f"`checkpoint_every: {value}` (seconds) = {value / epoch_s:.2f} of the baseline's "
                       f"median epoch training time ({epoch_s:.1f} s); aimed at {fraction:.2f}")
    return None, f"not set: the job spec refused checkpoint_every={wanted} and {max(1, int(round(wanted)))}"


def warm_up(work: Path, data: Path, s: Settings, name: str = "warm-up") -> None:
    """One unmeasured epoch first: whichever run came first would otherwise pay for cold caches
    (and for the dataset's label cache)."""
    print(f"  {name}: one unmeasured epoch", flush=True)
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(work / name / "yolo-config"))
    subprocess.run([YOLO, "train", "model=yolov8n.yaml", f"data={data}", "epochs=1", f"imgsz={s.imgsz}",
                    f"batch={s.batch}", "workers=0", "device=cpu", "plots=False", "amp=False",
                    *([] if s.val else ["val=False"]), f"project={work / name}", "name=run"],
                   env=env, capture_output=True, timeout=1800)


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
    print(f" {'completed' if out.completed else 'NOT completed'} in {out.elapsed_s:.0f}s; {out.status}"
          + (f"; INVALID: {out.invalid}" if out.invalid else ""), flush=True)
    for landing in runner.landings:
        print(f"      {landing.where()}", flush=True)
    if out.saves:
        print(f"      mid-epoch saves: {out.saves}", flush=True)
    if out.batches.get("per_interruption"):
        for row in out.batches["per_interruption"]:
            print(f"      epoch {row['epoch']}: {row['batches_twice']} batches trained twice, "
                  f"{row['images_never']} images never trained", flush=True)
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
    if o.invalid:
        return f"**INVALID** ({o.invalid})"
    if o.completed:
        return "yes"
    if o.capped:
        return f"**no**: {'hung' if o.scenario == 'sigstop' and o.status.startswith('hung') else 'still retrying'}" \
               f" at the {o.elapsed_s:.0f} s cap"
    if o.status.startswith("held"):
        return f"no: held after {o.elapsed_s:.0f} s, no process started (it waits for the dataset)"
    return f"no: gave up after {o.elapsed_s:.0f} s"


def fmt_ratio(o: Outcome, base: Optional[float]) -> str:
    if o.wall_s is None or o.invalid:
        return "—"
    if not base:
        return f"{o.wall_s:.0f} s"
    return f"{o.wall_s / base:.2f} ({o.wall_s:.0f} s)"


def fmt_latency(o: Outcome, only: Optional[int] = None) -> str:
    if not o.death_to_batch or o.invalid:
        return "—"
    values = o.death_to_batch if only is None else o.death_to_batch[only:only + 1]
    vals = ["never" if v is None else "not needed" if v == "done" else f"{v:.1f} s" for v in values]
    return " / ".join(vals) or "—"


def fmt_once(o: Outcome) -> str:
    if o.invalid:
        return "—"
    if o.epochs_once is None:
        return "— (no results.csv)"
    if o.epochs_once:
        return "yes"
    dup = sorted(e for e, c in Counter(o.epochs_seen).items() if c > 1)
    return f"no ({len(o.epochs_seen)} rows" + (f"; twice: {dup}" if dup else "") + ")"


def fmt_batches_twice(o: Outcome) -> str:
    if o.invalid or not o.batches:
        return "—"
    return str(o.batches.get("batches_twice_total", "—"))


def scenario_table(outcomes: list[Outcome], base: Optional[float]) -> str:
    rows = ["| scenario | system | completed | every epoch once in results.csv | wall time / baseline | "
            "restarts | epochs trained twice | batches trained twice | death → next first batch | how it ended |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        rows.append(f"| {SCENARIO_TITLES[o.scenario]} | {o.system} | {fmt_completed(o)} | "
                    f"{fmt_once(o)} | {fmt_ratio(o, base)} | {'—' if o.invalid else o.restarts} | "
                    f"{'—' if o.invalid else o.epochs_twice} | {fmt_batches_twice(o)} | "
                    f"{fmt_latency(o)} | {o.status.replace('|', '/')} |")
    return "\n".join(rows)


def long_table(outcomes: list[Outcome], base: Optional[float]) -> str:
    rows = ["| system | run | completed | every epoch once in results.csv | wall time / baseline | interruption "
            "| sent after batch | batches trained twice in that epoch | images of that epoch never trained "
            "| images of that epoch trained twice | death → next first batch |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        head = (f"| {o.system} | {'baseline' if o.scenario == 'long_baseline' else 'interrupted'} | "
                f"{fmt_completed(o)} | {fmt_once(o)} | {fmt_ratio(o, base)} ")
        per = o.batches.get("per_interruption", []) if not o.invalid else []
        if not per:
            rows.append(head + "| — | — | — | — | — | — |")
            continue
        for k, row in enumerate(per):
            at = f"{row['at_batch'] + 1}/{row['batches']} of epoch {row['epoch']}" if row["at_batch"] is not None \
                else f"epoch {row['epoch']}"
            never = "—" if row["images_never"] is None else str(row["images_never"])
            twice_img = "—" if row["images_twice"] is None else str(row["images_twice"])
            rows.append((head if k == 0 else "| | | | | ") + f"| {row['interruption']} | {at} | {row['batches_twice']} | "
                        f"{never} | {twice_img} | {fmt_latency(o, k)} |")
    return "\n".join(rows)


def saves_lines(outcomes: list[Outcome], default_s: float = 600.0) -> str:
    """What yolo-supervisor's mid-epoch saves cost, as its training child reported each one."""
    lines = []
    for o in outcomes:
        sv = o.saves
        if not sv or o.invalid:
            continue
        train_s = o.wall_s or o.elapsed_s
        size = f"{sv['size_bytes'] / 2**20:.1f} MiB" if sv.get("size_bytes") else "size not reported"
        line = (f"- {o.system}, {'baseline' if o.scenario == 'long_baseline' else 'interrupted run'}: "
                f"{sv['count']} mid-epoch saves, {sv['median_s']} s each (median; max {sv['max_s']} s), {size}; "
                f"{sv['total_s']} s in all, {sv['total_s'] / train_s:.1%} of the run's {train_s:.0f} s")
        if sv.get("median_s"):
            line += f"; at the default interval (10m) one save would be {sv['median_s'] / default_s:.3%} of training time"
        lines.append(line)
    if not lines:
        return ""
    return "\nMid-epoch saves (from the `last_midepoch` record in the child's progress file, sampled every " \
           "0.1 s, so a save may be missed when two follow within that):\n\n" + "\n".join(lines) + "\n"


def summary(outcomes: list[Outcome]) -> str:
    """One line per system: which scenarios it got through with every epoch exactly once."""
    lines = []
    for system in dict.fromkeys(o.system for o in outcomes):
        mine = [o for o in outcomes if o.system == system and o.scenario not in (*BASELINES, "no_dataset")]
        invalid = [SCENARIO_TITLES[o.scenario] for o in mine if o.invalid]
        mine = [o for o in mine if not o.invalid]
        good = [SCENARIO_TITLES[o.scenario] for o in mine if o.completed and o.epochs_once]
        bad = [SCENARIO_TITLES[o.scenario] for o in mine if not (o.completed and o.epochs_once)]
        nodata = next((o for o in outcomes if o.system == system and o.scenario == "no_dataset"), None)
        line = f"- **{system}**: finished with every epoch once after {len(good)} of {len(mine)} interruptions"
        if bad:
            line += f" (not after: {', '.join(bad)})"
        if invalid:
            line += f"; not counted, INVALID (an interruption did not land as planned): {', '.join(invalid)}"
        if nodata:
            line += ("; missing dataset: " + (f"gave up after {nodata.elapsed_s:.0f} s" if not nodata.capped
                     else f"still retrying at the {nodata.elapsed_s:.0f} s cap ({nodata.restarts} restarts)"))
        lines.append(line + ".")
    return "\n".join(lines)


def notes_section(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        extra = list(o.notes)
        if o.landings:
            extra.insert(0, "planned → landed: " + "; ".join(Landing(**x).where() for x in o.landings))
        if o.deaths:
            extra.insert(0, "signals at " + ", ".join(f"{t:.1f}" for t in o.deaths) + " s after start")
        if extra:
            lines.append(f"- **{o.system}, {SCENARIO_TITLES[o.scenario]}**: " + "; ".join(extra))
    return "\n".join(lines)


def plan_lines(plan: Plan, s: Settings) -> str:
    return (f"the 3 SIGKILLs after {', '.join(f'{p.fraction:.0%} of epoch {p.epoch}' for p in plan.kills)}; the "
            f"SIGTERM after {plan.term.fraction:.0%} of epoch {plan.term.epoch}; the SIGSTOP after "
            f"{plan.stop.fraction:.0%} of epoch {plan.stop.epoch} ({s.batches_per_epoch} batches an epoch: "
            f"batches {', '.join(str(p.index(s.batches_per_epoch) + 1) for p in (*plan.kills, plan.term, plan.stop))}); "
            f"the write kill in the save of epoch {plan.write_epoch}")


def write_report(path: Path, info: dict, settings: dict[str, Settings], plan: Plan, systems: dict[str, str],
                 outcomes: list[Outcome], bases: dict[str, Optional[float]], caps: dict[str, float],
                 micro_md: Optional[str], started: float, checkpoint_note: Optional[str]) -> None:
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
    short = [o for o in outcomes if family(o.scenario) == "short"]
    long_ = [o for o in outcomes if family(o.scenario) == "long_epoch"]
    if outcomes:
        text += f"""
## Recovery: yolo-supervisor against what users run today

Systems:

{system_lines}

Interruptions are planned as training positions (an epoch and a batch in it), not as times, so
the same experiment runs on a faster or slower machine: each signal is sent once a live training
process reports the planned batch trained (the instrument below; polled every
{POINT_POLL_S * 1000:.0f} ms, and the position it was really sent at is in the notes). A row where
a planned interruption did not land while training ran (the run finished before it, or its
position went by unseen) is marked **INVALID** and is not a result; one that could not land
because the system had already stopped training for good counts as that system's failure.
"""
    if short:
        s = settings["short"]
        base, cap_s = bases.get("short"), caps.get("short", 0.0)
        text += f"""
### Short epochs: six ways a run dies

The training: yolov8n from `yolov8n.yaml`, a generated dataset of {s.images} {s.imgsz}x{s.imgsz} images
with boxes (`supervisor.demo.make_dataset`), `epochs={s.epochs} imgsz={s.imgsz} batch={s.batch}
workers=0 device=cpu`, offline ({s.batches_per_epoch} batches an epoch). Each system ran each
scenario from an empty directory.

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
  counts once). **batches trained twice**: batches trained in an epoch, over all processes, beyond the
  epoch's number of batches. All come from records written inside each training process by Ultralytics
  callbacks added through a `sitecustomize.py` on `PYTHONPATH` (scripts/_bench_common.py): the user's
  commands are unchanged and every system is timed by the same code.
- **death → next first batch**: from the moment the signal was sent to the first trained batch of the
  next training process (same time stamps), for each signal; `never` when none followed.
- **every epoch once in results.csv**: the epochs of the run's results.csv are exactly 1..{s.epochs}.
- **the planned positions** (seed {s.seed}, the same for every system): {plan_lines(plan, s)}.
- **SIGKILL during the checkpoint write**: a helper process watches the weights directory with
  inotify and sends SIGKILL the moment last.pt is modified: Ultralytics rewrites last.pt in place
  (`Path.write_bytes`, no temp file), and the truncating open is reported before the bytes follow, so
  the kill lands inside the write and leaves last.pt empty or cut short. If the race is lost (the
  write already finished), the helper cuts last.pt to half at once and the notes say "simulated".
- **SIGTERM**: sent to the training process only (what a preemption notice or `kill` does), not to
  the loop's shell or to supervisord.

In short:

{summary(short)}

{scenario_table(short, base)}
"""
    if long_:
        s = settings["long_epoch"]
        base, cap_s = bases.get("long_epoch"), caps.get("long_epoch", 0.0)
        text += f"""
### Long epochs: what one interruption costs inside an epoch

The training: as above, on {s.images} generated {s.imgsz}x{s.imgsz} images, `epochs={s.epochs}
imgsz={s.imgsz} batch={s.batch} val=False` ({s.batches_per_epoch} batches an epoch; validation only
after the last epoch, to keep the run short). One uninterrupted run per system (the baseline: the
median, {f'{base:.1f} s' if base else 'not measured'}; cap {cap_s:.0f} s), then one run with
{' and '.join(str(p) for p in plan.long)}.

- **yolo-supervisor's checkpoint_every**: {checkpoint_note or 'not set'}.
- **batches trained twice in that epoch**: batches trained in the interrupted epoch, over all
  processes, beyond its {s.batches_per_epoch}; **images never trained**: training images (by file, from
  `batch["im_file"]` recorded for every trained batch) that no process trained in that epoch;
  **images trained twice**: images trained more than once in it.
- **death → next first batch**: as above, for each of the two signals.

{long_table(long_, base)}
{saves_lines(long_)}"""
    if outcomes:
        text += f"""
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
    p.add_argument("--scenarios", default="all",
                   help="scenario names, or the families short, long_epoch, all (default all)")
    p.add_argument("--seed", type=int, default=Settings.seed)
    p.add_argument("--epochs", type=int, default=Settings.epochs, help="epochs of the short scenarios")
    p.add_argument("--long-epochs", type=int, default=4, help="epochs of the long-epoch scenarios (>= 4)")
    p.add_argument("--long-images", type=int, default=1680, help="training images of the long-epoch scenarios")
    p.add_argument("--no-micro", action="store_true", help="skip the micro-figures")
    p.add_argument("--only-micro", action="store_true", help="only the micro-figures")
    p.add_argument("--json", type=Path, default=None, help="also write the raw outcomes here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.time()
    work = args.work or Path(f"/tmp/yolo-supervisor-bench-{time.strftime('%Y%m%d-%H%M%S')}")
    work.mkdir(parents=True, exist_ok=True)
    settings = {"short": Settings(seed=args.seed, epochs=args.epochs),
                "long_epoch": Settings.long_epoch(args.seed, epochs=args.long_epochs, images=args.long_images)}
    if args.long_epochs < 4:
        raise SystemExit("--long-epochs: at least 4 (the interruptions are in epochs 2 and 3)")
    info = machine()
    print(f"work directory {work}\nmachine: {info}", flush=True)
    systems = [x for x in args.systems.split(",") if x]
    scenarios = [] if args.only_micro else expand_scenarios(args.scenarios)
    families = list(dict.fromkeys(family(sc) for sc in scenarios))
    outcomes: list[Outcome] = []
    bases: dict[str, Optional[float]] = {}
    caps: dict[str, float] = {}
    plan = Plan.draw(args.seed, settings["short"].epochs)
    descriptions = {}
    checkpoint_note = None
    if scenarios:
        svd_bin = ensure_supervisord(args.cache, args.supervisord_bin) if "supervisord" in systems else None
        data = {}
        for fam in families:
            s = settings[fam]
            data[fam] = make_dataset(work / ("dataset" if fam == "short" else "dataset-long"), images=s.images,
                                     size=s.imgsz)
        missing = work / "no-such-dataset" / "data.yaml"
        hook = write_hook(work / "hook")
        for cls in (YoloSupervisor, Loop, Supervisord):
            if cls.name in systems:
                descriptions[cls.name] = cls.DESCRIPTION
        if svd_bin:
            descriptions["supervisord"] = f"{supervisord_version(svd_bin)}: {descriptions['supervisord']}"
        print(f"plan: {plan}", flush=True)
        for fam in families:
            warm_up(work, data[fam], settings[fam], name=f"warm-up-{fam}")
        # The uninterrupted runs first: the reference is their median (all three are one `yolo train`
        # when nothing goes wrong), and it sets the cap of the others (and checkpoint_every).
        order = [(sc, sy) for sc in scenarios for sy in systems]
        order.sort(key=lambda x: x[0] not in BASELINES)
        long_set = False
        for scenario, system in order:
            fam = family(scenario)
            s = settings[fam]
            if fam == "long_epoch" and scenario not in BASELINES and not long_set:
                long_set = True
                times = [x for o in outcomes if o.scenario == "long_baseline" for x in o.batches.get("epoch_train_s", [])]
                if times:
                    s.checkpoint_every, checkpoint_note = checkpoint_every_for(statistics.median(times))
                else:
                    checkpoint_note = "not set: no baseline epoch was measured"
                print(f"  long epochs, yolo-supervisor's checkpoint_every: {checkpoint_note}", flush=True)
            if scenario in BASELINES:
                cap = 1800.0
            elif scenario == "no_dataset":
                cap = s.no_dataset_cap_s
            else:
                cap = caps.get(fam) or s.cap_factor * 60.0
            dataset = data[fam]
            out = run_one(system, scenario, work, dataset, missing, s, plan, hook, cap, svd_bin)
            outcomes.append(out)
            baselines = [o.wall_s for o in outcomes if o.scenario in BASELINES and family(o.scenario) == fam
                         and o.wall_s]
            if baselines:
                bases[fam] = statistics.median(baselines)
                caps[fam] = s.cap_factor * bases[fam]
        outcomes.sort(key=lambda o: (SCENARIOS.index(o.scenario), systems.index(o.system)))
    micro_md = None
    if not args.no_micro:
        import bench_micro
        micro_md = bench_micro.run_all(work / "micro")
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    info["load average at the end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    write_report(args.out, info, settings, plan, descriptions, outcomes, bases, caps, micro_md, started,
                 checkpoint_note)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
