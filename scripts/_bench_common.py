"""Shared pieces of the benchmarks (scripts/bench_recovery.py, scripts/bench_micro.py).

Nothing here is part of the supervisor: these are the measuring instruments.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterable, Optional

import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
YOLO = str(Path(sys.executable).with_name("yolo"))

# -- instrumentation inside every training process -----------------------------------------

MARKERS_ENV = "BENCH_MARKERS"

# Written as sitecustomize.py into a directory put on PYTHONPATH of the training commands
# (the loop's yolo, supervisord's yolo, yolo-supervisor's child). It appends one line per
# fact, "KIND PID UNIX_TIME [ARG...]", to $BENCH_MARKERS: `start` when a training process
# starts, `epoch N` when epoch N (1-based) starts, `batch1 N` after the first trained batch
# of the process, `saved N` after each checkpoint save, and after every trained batch
# `b EPOCH I NB FILES`: the batch index I (0-based, as the trainer's loop counts it) of NB in
# epoch EPOCH and the images of the batch (file stems, comma-separated: batch["im_file"]).
# The callbacks are added to Ultralytics' default callbacks when that module is first
# imported, so the command a user runs is unchanged, and every system is timed by the same
# code at the same point. I and the batch come from the trainer's own loop frame (its locals
# `i` and `batch`); where that cannot be found, I counts this process's batches in the epoch
# and FILES is "?".
SITECUSTOMIZE = r'''
import os, sys, time

_MARKERS = os.environ.get("BENCH_MARKERS")


def _mark(kind, arg=""):
    line = f"{kind} {os.getpid()} {time.time():.6f} {arg}\n".encode()
    fd = os.open(_MARKERS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _is_training():
    try:
        with open("/proc/self/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return any(a.endswith(b"/yolo") for a in args) or b"supervisor.child.train" in args


def _loop_locals():
    f = sys._getframe(2)
    while f is not None and f.f_code.co_name != "_do_train":
        f = f.f_back
    return f.f_locals if f is not None else {}


def _stem(path):
    name = os.path.basename(str(path))
    return name.rsplit(".", 1)[0] or "?"


def _install(default_callbacks):
    first = []
    count = {}

    def on_train_epoch_start(trainer):
        count.clear()
        _mark("epoch", trainer.epoch + 1)

    def on_train_batch_end(trainer):
        if not first:
            first.append(1)
            _mark("batch1", trainer.epoch + 1)
        epoch = trainer.epoch + 1
        n = count[epoch] = count.get(epoch, -1) + 1
        i, files = n, "?"
        try:
            loop = _loop_locals()
            if isinstance(loop.get("i"), int):
                i = loop["i"]
            batch = loop.get("batch")
            if isinstance(batch, dict) and batch.get("im_file") is not None:
                files = ",".join(_stem(f) for f in batch["im_file"])
            nb = len(trainer.train_loader)
        except Exception:
            nb = -1
        _mark("b", f"{epoch} {i} {nb} {files}")

    def on_model_save(trainer):
        _mark("saved", trainer.epoch + 1)

    for fn in (on_train_epoch_start, on_train_batch_end, on_model_save):
        default_callbacks[fn.__name__].append(fn)


if _MARKERS and _is_training():
    import importlib.abc
    import importlib.machinery

    _mark("start")

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "ultralytics.utils.callbacks.base":
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None:
                return None
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                _install(module.default_callbacks)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())
'''


def write_hook(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return directory


@dataclass(frozen=True)
class Marker:
    kind: str
    pid: int
    at: float
    arg: Optional[int]
    rest: tuple[str, ...] = ()   # the fields after ARG (for `b`: I, NB, FILES)

    # `b` markers: one trained batch
    @property
    def epoch(self) -> Optional[int]:
        return self.arg

    @property
    def index(self) -> Optional[int]:
        return int(self.rest[0]) if self.kind == "b" and self.rest and self.rest[0].lstrip("-").isdigit() else None

    @property
    def batches(self) -> Optional[int]:
        ok = self.kind == "b" and len(self.rest) > 1 and self.rest[1].lstrip("-").isdigit()
        return int(self.rest[1]) if ok and int(self.rest[1]) > 0 else None

    @property
    def files(self) -> Optional[list[str]]:
        if self.kind != "b" or len(self.rest) < 3 or self.rest[2] == "?":
            return None
        return self.rest[2].split(",")


def _parse(line: str) -> Optional[Marker]:
    parts = line.split()
    if len(parts) < 3:
        return None
    try:
        arg = int(parts[3]) if len(parts) > 3 and parts[3].lstrip("-").isdigit() else None
        return Marker(parts[0], int(parts[1]), float(parts[2]), arg, tuple(parts[4:]))
    except ValueError:
        return None


def read_markers(path: Path) -> list[Marker]:
    out = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        m = _parse(line)
        if m is not None:
            out.append(m)
    return out


class MarkerReader:
    """read_markers, incrementally: only the lines appended since the last call are parsed
    (a long-epoch run writes thousands of `b` lines; the runner polls every few ms)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.markers: list[Marker] = []

    def read(self) -> list[Marker]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.markers
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()  # an unfinished last line waits for the next read
        for raw in lines:
            m = _parse(raw.decode(errors="replace"))
            if m is not None:
                self.markers.append(m)
        return self.markers


# -- a SIGKILL inside Ultralytics' write of last.pt -------------------------------------------

# Runs in its own process so that nothing in the benchmark's process (threads, the GIL,
# polling) delays the kill. inotify reports the truncating open of last.pt before the
# bytes follow (Ultralytics writes it in place with Path.write_bytes); the SIGKILL then
# lands inside the write. yolo-supervisor's child writes a temp file and renames it: the kill
# then lands inside the temp file's write, and last.pt is still the previous save. When the race is lost (the write finished first) and
# --truncate-if-intact is given, last.pt is cut to half at once, which is what a kill
# inside the write leaves; the output says which of the two happened.
KILL_ON_WRITE = r'''
import ctypes, os, select, struct, sys
from supervisor.probes.checkpoint import inspect_checkpoint
weights, pid, timeout, truncate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_CLOEXEC)
if fd < 0 or libc.inotify_add_watch(fd, weights.encode(), 0x2) < 0:  # IN_MODIFY
    sys.exit("inotify: " + os.strerror(ctypes.get_errno()))
pidfd = os.pidfd_open(pid)
print("ready", flush=True)
while True:
    ready, _, _ = select.select([fd, pidfd], [], [], timeout)
    if not ready or pidfd in ready:
        print("none no write of last.pt before the process ended", flush=True)
        sys.exit(0)
    data, off = os.read(fd, 65536), 0
    while off < len(data):
        _, _, _, n = struct.unpack_from("iIII", data, off)
        name = data[off + 16: off + 16 + n].rstrip(b"\0")
        # last.pt written in place (Ultralytics), or its temp file (yolo-supervisor's atomic save)
        atomic = name.startswith(b".last.pt.") and name.endswith(b".partial")
        if name == b"last.pt" or atomic:
            os.kill(pid, 9)
            killed_at = __import__("time").time()
            select.select([pidfd], [], [], 30)
            last = os.path.join(weights, "last.pt")
            info = inspect_checkpoint(last)
            if atomic:
                print(f"{killed_at} mid-write of the temp file: last.pt left {info.kind.value} "
                      f"({info.size} bytes, the previous save)", flush=True)
            elif info.kind.value == "corrupt":
                print(f"{killed_at} mid-write: last.pt left at {info.size} bytes ({info.problem})", flush=True)
            elif truncate and info.is_resumable:
                os.truncate(last, info.size // 2)
                print(f"{killed_at} simulated: the kill landed after the write; last.pt cut from "
                      f"{info.size} to {info.size // 2} bytes", flush=True)
            else:
                print(f"{killed_at} after-write: last.pt {info.kind.value} ({info.size} bytes)", flush=True)
            sys.exit(0)
        off += 16 + n
'''


def start_kill_on_write(weights: Path, pid: int, timeout: float, truncate_if_intact: bool) -> subprocess.Popen:
    """Arm the killer; returns once its inotify watch is in place."""
    proc = subprocess.Popen([PYTHON, "-c", KILL_ON_WRITE, str(weights), str(pid), str(timeout),
                             "1" if truncate_if_intact else "0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise RuntimeError(f"kill-on-write helper did not start: {line!r}")
    return proc


# -- processes -----------------------------------------------------------------------------------

def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_tree(root_pid: Optional[int], extra: Iterable[int] = ()) -> None:
    """SIGKILL a process, its descendants and ``extra`` pids (a SIGSTOPped process dies too)."""
    procs = []
    if root_pid:
        try:
            root = psutil.Process(root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            pass
    for pid in extra:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def processes_with_env(key: str, value: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(key) == value and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


# -- supervisord in its own virtual environment -----------------------------------------------------

def ensure_supervisord(cache: Path, explicit: Optional[str] = None) -> Path:
    """The bin directory holding supervisord/supervisorctl.

    supervisord's PyPI package is also named ``supervisor``, so it must never go into this
    project's environment: it gets its own venv under ``cache``.
    """
    if explicit:
        return Path(explicit)
    venv = cache / "supervisord-venv"
    bin_dir = venv / "bin"
    if not (bin_dir / "supervisord").exists():
        print(f"installing supervisord into {venv} (its own venv: its package name clashes with ours)",
              flush=True)
        subprocess.run([shutil.which("python3") or "python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(bin_dir / "pip"), "install", "-q", "supervisor"], check=True)
    return bin_dir


def supervisord_version(bin_dir: Path) -> str:
    try:
        return subprocess.run([str(bin_dir / "supervisord"), "--version"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


# -- numbers and the machine -----------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    """Linear-interpolated percentile, p in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": f"{cpu}, {usable} usable cores (of {os.cpu_count()})",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": _version("torch"),
        "ultralytics": _version("ultralytics"),
        "load average at the start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "gpu": "none used (CPU training)",
    }


def now_utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
