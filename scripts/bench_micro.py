#!/usr/bin/env python3
"""Micro-figures of the daemon: death detection, decision to spawn, checkpoint verification, RSS and CPU.

    .venv/bin/python scripts/bench_micro.py            # prints the markdown section
    (scripts/bench_recovery.py runs it too and puts the section into docs/benchmarks.md)

Real daemons (``python -m supervisor.daemon.main``) in scratch homes, observed through their
state.db and psutil. Where training itself is not the point, the training child runs a cheap
stand-in through the child's test-only hook (YOLO_SUPERVISOR_FAKE_TRAINER) that reports progress
like the real child; the checkpoints it is resumed from are real Ultralytics checkpoints.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import PYTHON, median, percentile  # noqa: E402

from supervisor.child.fake_hook import FAKE_TRAINER_ENV  # noqa: E402
from supervisor.demo import make_dataset  # noqa: E402
from supervisor.probes.checkpoint import inspect_checkpoint  # noqa: E402
from supervisor.store import Store  # noqa: E402

TARGETS = {"death_p95_ms": 200, "spawn_p95_s": 1.0, "verify_mb_s": 300, "rss_mb": 80, "cpu_pct": 1.0}

# Stands in for Ultralytics (see supervisor/child/train.py, FAKE_TRAINER_ENV): reports a trained
# batch at once, then a heartbeat per "batch" every 0.1 s (the progress file itself is written
# at most every 2 s, as by the real child), and leaves on SIGTERM like the real child.
# BENCH_FAKE_SAVE_DIR makes it report that run directory, whose weights/last.pt the daemon
# then verifies and resumes from.
FAKE = '''
import os, time
from supervisor.child.stop import exit_preempted

save_dir = os.environ.get("BENCH_FAKE_SAVE_DIR")
reporter.state["first_batch_at"] = time.time()
if save_dir:
    reporter.state["save_dir"] = save_dir
reporter.beat(force=True, phase="training", epoch=1, batch=1, batches=10)
i = 0
while True:
    if reporter.preempt_requested:
        exit_preempted(reporter, "bench fake")
    i += 1
    reporter.beat(phase="training", epoch=1, batch=i % 10 + 1, batches=10)
    time.sleep(0.1)
'''


# The daemon's own main, with cProfile switched on by SIGUSR1 and written out by SIGUSR2.
PROFILED_DAEMON = '''
import cProfile, os, signal, sys
prof = cProfile.Profile()
signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
def dump(*_):
    prof.disable()
    prof.dump_stats(os.environ["BENCH_PROFILE_OUT"])
signal.signal(signal.SIGUSR2, dump)
from supervisor.daemon.main import main
sys.exit(main(sys.argv[1:]))
'''


def wait_until(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Daemon:
    """A real daemon in ``home`` whose training children run the fake trainer."""

    def __init__(self, home: Path, fake: Path, save_dir: Optional[Path] = None, tick_s: Optional[float] = None,
                 profile_to: Optional[Path] = None):
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        if tick_s is not None:
            (home / "config.yaml").write_text(f"tick_s: {tick_s}\n")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{FAKE_TRAINER_ENV: str(fake)})
        if save_dir:
            env["BENCH_FAKE_SAVE_DIR"] = str(save_dir)
        entry = ["-m", "supervisor.daemon.main"]
        if profile_to:
            env["BENCH_PROFILE_OUT"] = str(profile_to)
            entry = ["-c", PROFILED_DAEMON]
        self.log = open(home / "daemon.log", "ab")
        self.proc = subprocess.Popen([PYTHON, *entry, "--home", str(home), "--log-level", "warning"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_until(lambda: (home / "supervisor.sock").exists() or self.proc.poll() is not None, 60, "the daemon")
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited {self.proc.returncode}: see {home / 'daemon.log'}")
        self.store = Store(home / "state.db")

    def drop(self, name: str, epochs: int = 100) -> None:
        spec = {"name": name,
                "train": {"model": "yolov8n.yaml", "data": "bench.yaml", "epochs": epochs, "device": "cpu"},
                "restart": {"max_restarts": 100000, "max_no_progress": 100000,
                            "backoff": {"initial": 0, "max": 0, "factor": 1}}}
        tmp = self.home / "inbox" / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump(spec))
        tmp.rename(self.home / "inbox" / f"{name}.yaml")

    def running_attempt(self, name: str, number: int):
        """Attempt ``number`` of ``name`` once its first batch is recorded (the job is running)."""
        def check():
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}")
            job = self.store.get_job(name)
            if job is None or job.state != "running" or job.attempts != number:
                return None
            return self.store.attempts(name)[-1]
        return wait_until(check, 60, f"attempt {number} of {name} running", interval=0.01)

    def close(self) -> None:
        self.store.close()
        self.proc.send_signal(signal.SIGTERM)  # the daemon leaves training running: kill the children after
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        from supervisor.process.launcher import kill_job_now
        for job in (self.home / "jobs").iterdir():
            kill_job_now(job.name, None)
        self.log.close()


# -- checkpoints --------------------------------------------------------------------------------------

def make_checkpoints(work: Path) -> dict[str, Path]:
    """Real Ultralytics checkpoints: yolov8n resumable (~30 MB) and stripped (~6 MB), yolo11m resumable (~200 MB)."""
    out = {"finished_6mb": work / "v8n" / "run" / "weights" / "last.pt",
           "resumable_30mb": work / "v8n" / "run" / "weights" / "epoch1.pt",
           "resumable_200mb": work / "11m" / "run" / "weights" / "epoch0.pt"}
    if all(p.exists() for p in out.values()):
        return out
    data = make_dataset(work / "dataset", images=16, size=64)
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(work / "yolo-config"))
    for model, epochs, folder in (("yolov8n.yaml", 2, "v8n"), ("yolo11m.yaml", 1, "11m")):
        code = ("import sys; from ultralytics import YOLO; YOLO(sys.argv[1]).train(data=sys.argv[2], "
                "epochs=int(sys.argv[3]), imgsz=64, batch=8, workers=0, device='cpu', plots=False, amp=False, "
                "save_period=1, val=False, project=sys.argv[4], name='run')")
        print(f"  training {model} for {epochs} epoch(s) to get real checkpoints ...", flush=True)
        subprocess.run([PYTHON, "-c", code, model, str(data), str(epochs), str(work / folder)], check=True,
                       env=env, capture_output=True, timeout=1800)
    return out


def verification_throughput(ckpts: dict[str, Path]) -> list[dict]:
    """inspect_checkpoint (CRC of every record + inert unpickle), page cache warm; median of several runs."""
    rows = []
    for label, path in ckpts.items():
        size = path.stat().st_size
        path.read_bytes()  # warm the page cache: this measures the verifier, not the disk
        runs = 5 if size > 100e6 else 15
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            info = inspect_checkpoint(path)
            times.append(time.perf_counter() - t0)
        t = median(times)
        rows.append({"label": label, "size_mb": size / 1e6, "kind": info.kind.value, "median_s": t,
                     "mb_s": size / 1e6 / t, "runs": runs, **_fixed_costs(path)})
    return rows


def _fixed_costs(path: Path) -> dict:
    """The part of a verification that does not grow with the bytes: records, and unpickling data.pkl."""
    import zipfile

    from supervisor.probes.checkpoint import _SafeUnpickler  # the probe's own inert unpickler

    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        data = zf.read(next(i for i in infos if i.filename.endswith("data.pkl")))
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        _SafeUnpickler(data).load()
        times.append(time.perf_counter() - t0)
    return {"records": len(infos), "pkl_kb": len(data) / 1e3, "unpickle_s": median(times)}


# -- latencies ----------------------------------------------------------------------------------------

def death_detection(work: Path, fake: Path, samples: int) -> list[float]:
    """SIGKILL a supervised child; the time until the daemon has recorded the attempt's end (ended_at)."""
    d = Daemon(work / "death-home", fake)
    try:
        d.drop("d")
        out = []
        for n in range(1, samples + 1):
            attempt = d.running_attempt("d", n)
            time.sleep(0.3)  # not right after the start: the daemon is idle, as when a real child dies
            t0 = time.time()
            os.kill(attempt.pid, signal.SIGKILL)
            ended = wait_until(lambda: d.store.attempts("d")[n - 1].ended_at, 30, "the attempt's end",
                               interval=0.005)
            out.append(ended - t0)
        return out
    finally:
        d.close()


BACKOFF = re.compile(r"next attempt in ([\d.]+)s")


def decision_to_spawn(work: Path, fake: Path, run_dir: Path, samples: int, tick_s: Optional[float]) -> dict:
    """From the restart decision (the job's transition to backoff) to the next child's pid existing,
    less the configured backoff (0 here), with a resumable last.pt verified before each spawn."""
    d = Daemon(work / f"spawn-home-{tick_s or 'default'}", fake, save_dir=run_dir, tick_s=tick_s)
    try:
        d.drop("s")
        d.running_attempt("s", 1)
        wait_until(lambda: list((d.home / "jobs" / "s" / "checkpoints").glob("epoch-*.pt")), 60,
                   "the vault copy of last.pt")
        latencies, to_verified = [], []
        for n in range(1, samples + 1):
            attempt = d.running_attempt("s", n)
            time.sleep(0.3)
            os.kill(attempt.pid, signal.SIGKILL)
            nxt = d.running_attempt("s", n + 1)
            events = d.store.events("s")
            exit_id = next(e.id for e in events if e.kind == "exit" and e.reason.startswith(f"attempt {n}:"))
            decision = next(e for e in events if e.id > exit_id and e.to_state == "backoff")
            verified = next(e for e in events if e.id > decision.id and e.kind == "checkpoint")
            m = BACKOFF.search(decision.reason or "")
            configured = float(m.group(1)) if m else 0.0
            latencies.append(nxt.started_at - decision.at - configured)
            to_verified.append(verified.at - decision.at - configured)
        notes = [e.reason for e in d.store.events("s") if e.kind == "checkpoint"][-1:]
        return {"latencies": latencies, "to_verified": to_verified, "note": notes[0] if notes else ""}
    finally:
        d.close()


# -- footprint ----------------------------------------------------------------------------------------

def _start_jobs(d: Daemon, jobs: int) -> None:
    for i in range(jobs):
        d.drop(f"j{i:02d}")

    def all_running():
        if d.proc.poll() is not None:
            raise RuntimeError(f"daemon exited {d.proc.returncode}")
        return sum(j.state == "running" for j in d.store.list_jobs()) == jobs
    wait_until(all_running, 300, f"{jobs} jobs running", interval=0.2)
    time.sleep(5)  # settle: vault directories created, first progress files read


def footprint(work: Path, fake: Path, jobs: int, window_s: float) -> dict:
    """The daemon's RSS and CPU while ``jobs`` fake trainings run and nothing else happens."""
    d = Daemon(work / f"footprint-home-{jobs}", fake)
    try:
        _start_jobs(d, jobs)
        proc = psutil.Process(d.proc.pid)
        c0, t0 = proc.cpu_times(), time.monotonic()
        rss = []
        while time.monotonic() - t0 < window_s:
            rss.append(proc.memory_info().rss)
            time.sleep(1)
        c1, t1 = proc.cpu_times(), time.monotonic()
        cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0) * 100
        return {"jobs": jobs, "rss_mb": max(rss) / 1e6, "cpu_pct": cpu, "window_s": t1 - t0,
                "threads": proc.num_threads()}
    finally:
        d.close()


WRAPPERS = {"guarded"}  # housekeeping calls the job steps through these: show what they call


def idle_profile(work: Path, fake: Path, jobs: int, window_s: float) -> dict:
    """Where an idle housekeeping tick goes with ``jobs`` running: cProfile of the daemon, steady state.

    Shares of the tick's time by what housekeeping calls (cProfile slows everything, so the
    shares matter, not the absolute times).
    """
    out = work / f"idle-{jobs}.prof"
    d = Daemon(work / f"profile-home-{jobs}", fake, profile_to=out)
    try:
        _start_jobs(d, jobs)
        d.proc.send_signal(signal.SIGUSR1)
        time.sleep(window_s)
        d.proc.send_signal(signal.SIGUSR2)
        wait_until(out.exists, 30, "the profile")
        time.sleep(0.5)
    finally:
        d.close()
    import pstats
    stats = pstats.Stats(str(out)).stats
    hk = next(k for k in stats if k[2] == "housekeeping" and k[0].endswith("core.py"))
    ticks, total = stats[hk][1], stats[hk][3]

    def callees(parent):
        for key, (_, _, _, _, callers) in stats.items():
            if parent in callers:
                yield key, callers[parent][3]
    parts: dict[str, float] = {}
    for key, ct in callees(hk):
        if key[2] in WRAPPERS:
            for sub, sub_ct in callees(key):
                parts[sub[2]] = parts.get(sub[2], 0.0) + sub_ct
        else:
            parts[key[2]] = parts.get(key[2], 0.0) + ct
    shares = sorted(((name, ct / total) for name, ct in parts.items()), key=lambda x: -x[1])
    return {"jobs": jobs, "ticks": ticks, "ms_per_tick_profiled": total / ticks * 1000, "shares": shares}


# -- the section -------------------------------------------------------------------------------------------

def ok(value: float, target: float, lower_is_better: bool = True) -> str:
    good = value <= target if lower_is_better else value >= target
    return "meets" if good else "**misses**"


def run_all(work: Path, samples: int = 20, window_s: float = 30.0) -> str:
    work.mkdir(parents=True, exist_ok=True)
    fake = work / "fake_trainer.py"
    fake.write_text(FAKE)
    print("micro: checkpoints", flush=True)
    ckpts = make_checkpoints(work / "ckpt")
    verify = verification_throughput(ckpts)
    print(f"micro: verification {[(round(r['size_mb']), round(r['mb_s'])) for r in verify]}", flush=True)

    run_dir = work / "spawn-run"
    (run_dir / "weights").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ckpts["resumable_30mb"], run_dir / "weights" / "last.pt")

    print("micro: death detection", flush=True)
    death = death_detection(work, fake, samples)
    print("micro: decision to spawn", flush=True)
    spawn_default = decision_to_spawn(work, fake, run_dir, samples, tick_s=None)
    spawn_fast = decision_to_spawn(work, fake, run_dir, samples, tick_s=0.1)
    feet = []
    for jobs in (1, 8, 32):
        print(f"micro: footprint with {jobs} job(s)", flush=True)
        feet.append(footprint(work, fake, jobs, window_s))
    profile = None
    if feet[-1]["cpu_pct"] > TARGETS["cpu_pct"]:
        print("micro: idle CPU misses its target: profiling the daemon with 32 jobs", flush=True)
        profile = idle_profile(work, fake, 32, window_s)
    return render(verify, death, spawn_default, spawn_fast, feet, samples, window_s, profile)


def render(verify, death, spawn_default, spawn_fast, feet, samples, window_s, profile=None) -> str:
    death_ms = [x * 1000 for x in death]
    p50, p95 = percentile(death_ms, 50), percentile(death_ms, 95)
    sd, sf = spawn_default["latencies"], spawn_fast["latencies"]
    vd = spawn_default["to_verified"]
    ck30 = next(r for r in verify if r["label"] == "resumable_30mb")
    lines = [
        "",
        "## Micro-figures",
        "",
        "Real daemons in scratch homes, default configuration unless said; the training child runs a",
        "stand-in (the child's test-only `YOLO_SUPERVISOR_FAKE_TRAINER` hook) that reports a batch every",
        "0.1 s through the real child's progress writer. Checkpoints are real Ultralytics ones.",
        "",
        "| figure | measured | target | |",
        "|---|---|---|---|",
        f"| death detection, p50 / p95 ({samples} SIGKILLs) | {p50:.0f} / {p95:.0f} ms | p95 ≤ 200 ms | "
        f"{ok(p95, 200)} |",
        f"| decision → spawn, 30 MB checkpoint verified, p50 / p95 ({samples} restarts) | "
        f"{median(sd):.2f} / {percentile(sd, 95):.2f} s | p95 ≤ 1 s | {ok(percentile(sd, 95), 1.0)} |",
        f"| same with `tick_s: 0.1` in HOME/config.yaml | {median(sf):.2f} / {percentile(sf, 95):.2f} s | "
        f"p95 ≤ 1 s | {ok(percentile(sf, 95), 1.0)} |",
    ]
    for r in verify:
        lines.append(f"| checkpoint verification, {r['size_mb']:.0f} MB ({r['kind']}) | {r['mb_s']:.0f} MB/s "
                     f"({r['median_s'] * 1000:.0f} ms) | ≥ 300 MB/s | {ok(r['mb_s'], 300, False)} |")
    for f in feet:
        lines.append(f"| daemon RSS / CPU, {f['jobs']} job(s) | {f['rss_mb']:.0f} MB / {f['cpu_pct']:.2f} % of a "
                     f"core | ≤ 80 MB; ≤ 1 % at 32 jobs | {ok(f['rss_mb'], 80)} / "
                     f"{ok(f['cpu_pct'], 1.0) if f['jobs'] == 32 else '(no CPU target)'} |")
    lines += [
        "",
        "How each was measured:",
        "",
        "- **death detection**: `os.kill(pid, SIGKILL)` on a running child, to the attempt's `ended_at` in",
        "  state.db (the daemon's own clock, written once it has classified the end). The daemon learns of",
        "  the exit at once (a pidfd on its selector); the rest is its bookkeeping: finding and killing any",
        "  process left with the job's marker, reading the progress and exit files and the log tail,",
        "  verifying the checkpoint, writing the rows.",
        "- **decision → spawn**: the `state` event of the move to `backoff` (the policy's decision) to the",
        "  next attempt's `started_at` (written as soon as the child's pid exists), less the configured",
        "  backoff (0 s here). Before each spawn the daemon verifies RUN/weights/last.pt, a real resumable",
        f"  yolov8n checkpoint of {ck30['size_mb']:.0f} MB, and its vault copy ({spawn_default['note']!r}).",
        f"  Decision → verification done: p50 {median(vd):.2f} s, p95 {percentile(vd, 95):.2f} s.",
        "- **checkpoint verification**: `supervisor.probes.checkpoint.inspect_checkpoint` (CRC-32 of every",
        "  zip record plus the inert unpickling of data.pkl), page cache warm, median of several runs. The",
        "  200 MB file is a resumable yolo11m checkpoint (fp16 EMA + AdamW state), the 6 MB one a finished",
        "  (stripped) yolov8n last.pt.",
        f"- **RSS / CPU**: psutil on the daemon process alone (not its children) over {window_s:.0f} s once",
        "  every job was `running` and 5 s had passed: the largest RSS seen (1 MB = 10^6 bytes), and CPU",
        "  time (user + system) over wall time, in % of one core.",
        "",
    ]
    lines += explain(p95, percentile(sd, 95), percentile(sf, 95), median(vd), verify, feet, profile)
    return "\n".join(lines) + "\n"


# What each housekeeping step does per tick, and what would make it cheap (for the CPU explanation).
STEP_NOTES = {
    "watch_running": "per running job: reads progress.json and the job's row from SQLite several times, "
                     "checks the vault and the stall rule; reading progress only when its mtime changed and "
                     "keeping the job rows in memory (the loop thread owns them) would make it a stat() per job",
    "reap_orphans": "psutil's children() of the daemon, which reads /proc/PID/stat of every process on the "
                    "host each tick to build the parent map; reaping only on SIGCHLD (waitid with WNOWAIT to "
                    "leave its own children to Popen) would remove it",
    "note_epochs_reached": "a housekeeping hook (goodput) that reads each job's progress file again whenever "
                           "it changed (every 2 s while training) and writes the epochs reached to SQLite; it "
                           "could use the read watch_running already did",
    "start_due_jobs": "lists every job from SQLite to find due ones; a due-time heap in memory would remove it",
    "release_healthy_holds": "lists every job from SQLite each tick",
}


def explain(death_p95, spawn_p95, spawn_fast_p95, verify_p50, verify, feet, profile=None) -> list[str]:
    """Why a figure misses its target, and what would reach it."""
    out = []
    if death_p95 > TARGETS["death_p95_ms"]:
        out.append(f"- Death detection misses (p95 {death_p95:.0f} ms): the exit itself is seen at once through "
                   "the pidfd; the time goes into the work done before `ended_at` is written (finding leftover "
                   "processes of the job by reading the environment of every process on the host, reading the "
                   "progress, exit and log files, verifying the checkpoint). Writing the end first and doing "
                   "the rest after would reach it.")
    if spawn_p95 > TARGETS["spawn_p95_s"]:
        out.append(f"- Decision → spawn misses with the default configuration (p95 {spawn_p95:.2f} s): the "
                   "restart is not started where it is decided but by `start_due_jobs` in the next "
                   "housekeeping tick (`tick_s`, 1 s by default), so it waits up to a whole tick, then "
                   f"verifies the checkpoint (decision → verified: p50 {verify_p50:.2f} s). With `tick_s: 0.1` "
                   f"the p95 is {spawn_fast_p95:.2f} s. Without a faster tick: let the loop sleep only until "
                   "the earliest `next_start_at` (or call `start_due_jobs` right after a decision with no "
                   "delay).")
    for r in verify:
        if r["mb_s"] < TARGETS["verify_mb_s"]:
            out.append(f"- Verification of the {r['size_mb']:.0f} MB file misses ({r['mb_s']:.0f} MB/s, "
                       f"{r['median_s'] * 1000:.0f} ms): part of the work does not shrink with the file: "
                       f"unpickling its {r['pkl_kb']:.0f} KB data.pkl (a whole pickled model) takes "
                       f"{r['unpickle_s'] * 1000:.0f} ms, and it has {r['records']} zip records to seek to and "
                       "check one by one, while the CRC itself runs at the larger files' rate. On a file this "
                       "small a few ms of interference from the shared machine also move it across the line. "
                       "What would reach it: the probe needs only `epoch`, whether `optimizer` is None and "
                       "`train_args`, yet builds a stub for every object of the pickled model to get them; "
                       "skipping the objects under `ema`/`model` while unpickling would remove most of those ms.")
    big = [f for f in feet if f["jobs"] == 32]
    if big and big[0]["rss_mb"] > TARGETS["rss_mb"]:
        out.append(f"- RSS at 32 jobs misses ({big[0]['rss_mb']:.0f} MB).")
    if big and big[0]["cpu_pct"] > TARGETS["cpu_pct"]:
        text = (f"- Idle CPU at 32 jobs misses ({big[0]['cpu_pct']:.1f} % of a core): nothing happens, yet every "
                "housekeeping tick (1 s) polls every job.")
        if profile:
            parts = [f"`{name}` {share * 100:.0f} %" for name, share in profile["shares"][:5] if share >= 0.03]
            text += (f" A cProfile of the daemon with 32 jobs ({profile['ticks']} ticks) splits a tick's time "
                     f"into: {', '.join(parts)}.")
            for name, share in profile["shares"][:5]:
                if share >= 0.1 and name in STEP_NOTES:
                    text += f" `{name}`: {STEP_NOTES[name]}."
                elif share >= 0.1:
                    text += f" `{name}` is a housekeeping hook or step run every tick."
        out.append(text)
    if out:
        out.insert(0, "Where a figure misses its target:\n")
    return out


def main() -> int:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(f"/tmp/yolo-supervisor-micro-{os.getpid()}")
    print(run_all(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
