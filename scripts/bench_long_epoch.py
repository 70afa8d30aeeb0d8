#!/usr/bin/env python3
"""Long-epoch benchmark: what one SIGKILL and one SIGTERM cost when an epoch is long.

    .venv/bin/python scripts/bench_long_epoch.py --out docs/benchmarks-long-epoch.md

One CPU training (yolov8n from its yaml, 1,600 generated 64 px images, batch 8: 200 batches an
epoch, 3 epochs) run by yolo-supervisor, the shell ``until`` loop and supervisord (the same commands
as scripts/bench_recovery.py). Each interrupted run gets a SIGKILL at 70 % of epoch 2 and a SIGTERM at
50 % of epoch 3, scheduled by training progress (the batch index the process itself reports), so the
schedule does not depend on the machine's speed; an interruption that did not land inside its epoch
makes the row INVALID. yolo-supervisor runs with ``checkpoint_every`` at about a tenth of the
measured epoch time (the ratio is printed).

Everything is counted from inside the training processes: scripts/batch_trace/sitecustomize.py on
PYTHONPATH appends one line per trained batch (pid, time, epoch, batch index, image files) to a file. From it:
batches trained twice (batches trained in an epoch beyond its length), images of the interrupted
epochs never trained, wall time / baseline, death -> next first batch, and (yolo-supervisor) the
mid-epoch save time and checkpoint size from its progress file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import alive, ensure_supervisord, machine, now_utc, supervisord_version  # noqa: E402
from bench_recovery import Loop, Settings, Supervisord, YoloSupervisor  # noqa: E402

from supervisor.demo import make_dataset  # noqa: E402

TRACER = Path(__file__).resolve().parent / "batch_trace"  # sitecustomize.py: one line per trained batch

POLL_S = 0.02


@dataclass
class Interruption:
    sig: str
    epoch: int           # 1-based, the epoch it was aimed at
    fraction: float
    at: Optional[float] = None
    landed: Optional[tuple[int, int]] = None   # (epoch 1-based, batches trained) when it was sent
    pid: Optional[int] = None

    @property
    def valid(self) -> bool:
        return self.landed is not None and self.landed[0] == self.epoch


@dataclass
class Result:
    system: str
    scenario: str
    completed: bool
    wall_s: Optional[float]
    batches_twice: int = 0
    images_never: int = 0
    images_twice: int = 0
    death_to_batch: list = field(default_factory=list)
    interruptions: list = field(default_factory=list)
    saves: list = field(default_factory=list)      # (seconds, bytes) of mid-epoch saves (yolo-supervisor)
    notes: list = field(default_factory=list)


class Traced:
    """Adds the per-batch trace to a bench_recovery system (its own commands unchanged)."""

    def __init__(self, system, trace: Path):
        self.system, self.trace = system, trace
        system.env["TRACE_BATCHES"] = str(trace)

    def batches(self) -> list[dict]:
        try:
            return [json.loads(x) for x in self.trace.read_text().splitlines() if x.strip()]
        except FileNotFoundError:
            return []


def run(system, scenario: str, plan: list[Interruption], cap_s: float, trace: Path) -> Result:
    t = Traced(system, trace)
    system.start()
    done = None
    try:
        for stop in plan:
            target = int(stop.fraction * 200)
            polls = 0
            while done is None:
                live = [b for b in t.batches() if b["epoch"] + 1 == stop.epoch and b["i"] + 1 >= target
                        and alive(b["pid"])]
                if live or time.time() - system.started_at > cap_s:
                    break
                polls += 1
                if polls % 25 == 0:  # the daemon's database is not read 50 times a second
                    done = system.finished()
                time.sleep(POLL_S)
            if done is not None:
                break
            newest = max(t.batches(), key=lambda b: b["at"])
            stop.pid, stop.at = newest["pid"], time.time()
            stop.landed = (newest["epoch"] + 1, newest["i"] + 1)
            os.kill(newest["pid"], signal.SIGKILL if stop.sig == "SIGKILL" else signal.SIGTERM)
        while done is None and time.time() - system.started_at < cap_s:
            done = system.finished()
            time.sleep(0.1)
    finally:
        system.stop()
        for pid in {b["pid"] for b in t.batches()}:  # no training outlives its run
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    return measure(system, scenario, plan, done, t)


def measure(system, scenario: str, plan: list[Interruption], done, t: Traced) -> Result:
    rows = t.batches()
    completed = bool(done and done[0])
    res = Result(system.name, scenario, completed, round(done[2] - system.started_at, 1) if completed else None)
    nb = rows[0]["nb"] if rows else 200
    for epoch in sorted({r["epoch"] for r in rows}):
        trained = [r for r in rows if r["epoch"] == epoch]
        res.batches_twice += max(0, len(trained) - nb)
        if any(s.landed and s.landed[0] == epoch + 1 for s in plan):
            counts = Counter(f for r in trained for f in r["files"])
            res.images_never += 1600 - len(counts)
            res.images_twice += sum(c - 1 for c in counts.values())
    for stop in plan:
        if stop.at is None:
            res.death_to_batch.append(None)
            continue
        nxt = [r["at"] for r in rows if r["at"] > stop.at and r["pid"] != stop.pid]
        res.death_to_batch.append(round(min(nxt) - stop.at, 2) if nxt else None)
    res.interruptions = [f"{s.sig} aimed at epoch {s.epoch} batch {int(s.fraction * 200)}: "
                         + (f"landed at epoch {s.landed[0]} batch {s.landed[1]}" if s.landed else "never sent")
                         + ("" if s.valid else " (INVALID)") for s in plan]
    if isinstance(system, YoloSupervisor):
        res.saves = supervisor_saves(system)
        attempts = system.attempts()
        res.notes += [f"#{a.number} {a.cause or 'open'} from {a.epochs_before}+{a.batch_before or 0}b"
                      for a in attempts]
        gaps = [round(b.started_at - a.ended_at, 3) for a, b in zip(attempts, attempts[1:]) if a.ended_at]
        if gaps:
            res.notes.append(f"daemon: attempt exit -> next spawn {gaps} s")
        from supervisor.child.progress import read_json

        marks = (read_json(system.home / "jobs" / system.JOB / "progress.json") or {}).get("startup")
        if marks:
            res.notes.append("last attempt's start-up, seconds from process start: "
                             + ", ".join(f"{k} {v}" for k, v in marks.items()))
    return res


def supervisor_saves(system: YoloSupervisor) -> list[tuple[float, int]]:
    """Mid-epoch save times and sizes, from the daemon's snapshot events and the last progress file."""
    from supervisor.child.progress import read_json

    p = read_json(system.home / "jobs" / system.JOB / "progress.json") or {}
    m = p.get("last_midepoch")
    return [(m["seconds"], m["size"])] if m else []


class LongSupervisor(YoloSupervisor):
    # Its own job name: the daemon finds a job's stray processes by the job name in their
    # environment, host-wide, so another benchmark's "bench" job must not be this one.
    JOB = "bench-long-epoch"
    every_s: float = 0.0

    def spec(self) -> dict:
        spec = super().spec()
        spec["train"]["val"] = False
        spec["checkpoint_every"] = self.every_s
        return spec


def make(system_name: str, work: Path, data: Path, s: Settings, hook: Path, svd_bin) -> object:
    cls = {"loop": Loop, "supervisord": Supervisord, "yolo-supervisor": LongSupervisor}[system_name]
    kwargs = {"bin_dir": svd_bin} if cls is Supervisord else {}
    system = cls(work, data, s, hook, **kwargs)
    # This checkout's package, not whatever an editable install points at: a benchmark run from a
    # snapshot (git worktree) measures that snapshot.
    system.env["PYTHONPATH"] = os.pathsep.join([str(hook), str(Path(__file__).resolve().parents[1])])
    if cls is not LongSupervisor:
        orig = system.train_args
        system.train_args = lambda: [*orig(), "val=False"]
    return system


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks-long-epoch.md"))
    ap.add_argument("--work", type=Path)
    ap.add_argument("--systems", default="yolo-supervisor,loop,supervisord")
    ap.add_argument("--cache", type=Path, default=Path(".bench-cache"))
    ap.add_argument("--supervisord-bin", type=Path)
    args = ap.parse_args(argv)
    started = time.time()
    work = args.work or Path(f"/tmp/yolo-supervisor-long-{time.strftime('%Y%m%d-%H%M%S')}")
    work.mkdir(parents=True, exist_ok=True)
    s = Settings(epochs=3, images=1600, imgsz=64, batch=8)
    info = machine()
    systems = args.systems.split(",")
    svd_bin = ensure_supervisord(args.cache, args.supervisord_bin) if "supervisord" in systems else None
    data = make_dataset(work / "dataset", images=s.images, size=s.imgsz)
    hook = TRACER
    print(f"work {work}; machine {info}", flush=True)

    results: list[Result] = []
    base = make("loop", work / "baseline-loop", data, s, hook, svd_bin)
    print("baseline (the loop: plain yolo train) ...", flush=True)
    results.append(run(base, "baseline", [], 1800, work / "baseline-loop" / "batches.jsonl"))
    rows = Traced(base, work / "baseline-loop" / "batches.jsonl").batches()
    epoch_s = statistics.median(
        max(r["at"] for r in rows if r["epoch"] == e) - min(r["at"] for r in rows if r["epoch"] == e)
        for e in range(s.epochs))
    LongSupervisor.every_s = round(epoch_s / 10, 1)
    print(f"  epoch {epoch_s:.1f} s; checkpoint_every {LongSupervisor.every_s} s", flush=True)
    baseline_s = results[0].wall_s
    sup = make("yolo-supervisor", work / "baseline-yolo-supervisor", data, s, hook, svd_bin)
    print("baseline (yolo-supervisor, with its mid-epoch saves) ...", flush=True)
    results.append(run(sup, "baseline", [], 1800, work / "baseline-yolo-supervisor" / "batches.jsonl"))
    for name in systems:
        plan = [Interruption("SIGKILL", 2, 0.7), Interruption("SIGTERM", 3, 0.5)]
        system = make(name, work / f"interrupted-{name}", data, s, hook, svd_bin)
        print(f"{name}: SIGKILL at 70% of epoch 2, SIGTERM at 50% of epoch 3 ...", flush=True)
        results.append(run(system, "interrupted", plan, 3 * (baseline_s or 600),
                           work / f"interrupted-{name}" / "batches.jsonl"))
        print(f"  {results[-1]}", flush=True)
    report(args.out, info, s, epoch_s, LongSupervisor.every_s, baseline_s, results, svd_bin, started)
    print(f"wrote {args.out}")
    return 0


def report(out: Path, info: dict, s: Settings, epoch_s: float, every_s: float, baseline_s, results, svd_bin,
           started: float) -> None:
    lines = [
        "# Long-epoch benchmark (mid-epoch checkpoints)", "",
        f"Generated by `scripts/bench_long_epoch.py` on {now_utc()}, in {(time.time() - started) / 60:.0f} min.", "",
        "Machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()), "",
        f"Training: yolov8n.yaml, {s.images} generated {s.imgsz} px images, batch {s.batch} (200 batches an "
        f"epoch), {s.epochs} epochs, CPU, `val=False`. Epoch: {epoch_s:.1f} s (median of the baseline); "
        f"yolo-supervisor's `checkpoint_every` = {every_s} s, a ratio of {every_s / epoch_s:.2f} of an epoch "
        f"({every_s / epoch_s * 200:.0f} batches).", "",
        "Interruptions, by training progress: a SIGKILL at 70 % of epoch 2, then a SIGTERM at 50 % of epoch "
        "3. A row whose interruption did not land inside its epoch is marked INVALID.", "",
        f"supervisord: {supervisord_version(svd_bin) if svd_bin else 'not run'}.", "",
        "| system | run | completed | wall / baseline | batches trained twice | images of the interrupted "
        "epochs never trained | images trained twice there | death -> first batch | interruptions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{r.wall_s / baseline_s:.2f} ({r.wall_s:.0f} s)" if r.wall_s and baseline_s else "—"
        d2b = " / ".join("never" if v is None else f"{v:.1f} s" for v in r.death_to_batch) or "—"
        lines.append(f"| {r.system} | {r.scenario} | {'yes' if r.completed else '**no**'} | {ratio} | "
                     f"{r.batches_twice} | {r.images_never} | {r.images_twice} | {d2b} | "
                     f"{'; '.join(r.interruptions) or '—'} |")
    saves = [x for r in results for x in r.saves]
    lines += [""]
    if saves:
        secs, size = saves[-1]
        lines.append(f"Mid-epoch save (yolo-supervisor, last one seen): {secs:.2f} s, {size / 1e6:.1f} MB; at the "
                     f"default `checkpoint_every: 10m` that is {secs / 600 * 100:.2f} % of training time.")
    for r in results:
        if r.notes:
            lines.append(f"- {r.system} {r.scenario}: {'; '.join(r.notes)}")
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
