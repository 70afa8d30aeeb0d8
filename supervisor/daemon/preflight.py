"""Preflight: before a launch, are the files the attempt needs there? Checked without torch.

A moved dataset or an unmounted NFS share otherwise costs a whole attempt (the child imports torch,
builds the model, and dies with ``config_error``), and the job then fails. Here the daemon looks
first: the dataset YAML, the paths inside it (``path:``, ``train:``, ``val:``) and, for a fresh
start, the model file. Anything missing holds the job with a reason that names the path and the
fix; the hold lifts by itself when the path comes back.

The checks run on a worker of the daemon (supervisor/daemon/workers.py), in a forked process with
a deadline, so a hung NFS mount cannot stall the daemon's loop (it counts as missing). A FIFO or
device where a file should be is never opened for reading (it would wait for a writer): it is
"not a plain file", and the job waits as for a missing one. When the daemon is root that process first takes the job owner's
identity: a job cannot make the daemon reveal whether a root-only file exists, and the answer
never contains file contents.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import signal
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

MAX_DATA_YAML = 1 << 20  # a data YAML is small; anything bigger is not read
DEADLINE_S = 10.0        # a filesystem that does not answer by then counts as missing


@dataclass(frozen=True)
class Preflight:
    missing: Optional[str] = None   # the missing path, or None when everything is there
    reason: str = ""                # the sentence for the job's state and history

    @property
    def ok(self) -> bool:
        return self.missing is None


def check(data: str, model: Optional[str], name: str, owner: Optional[tuple[int, int]] = None,
          deadline_s: float = DEADLINE_S) -> Preflight:
    """Check the dataset and (fresh start) the model, as ``owner`` when the daemon is root."""
    become = owner if owner is not None and os.geteuid() == 0 and owner[0] != 0 else None
    return _in_child(become, data, model, name, deadline_s)


def _check(data: str, model: Optional[str], name: str) -> Preflight:
    problem = _dataset_problem(data) or (_model_problem(model) if model else None)
    if problem is None:
        return Preflight()
    path, what = problem
    fix = (f"yolo-supervisorctl edit {name} data=NEW.yaml" if what.startswith("dataset")
           else f"put the model at {path}, or resubmit with another model")
    found = "is not a readable plain file" if os.path.exists(path) else "is missing"  # a FIFO, no permission
    return Preflight(path, f"{what} {path} {found}; the job waits for it to appear (or: {fix})")


def _dataset_problem(data: str) -> Optional[tuple[str, str]]:
    yaml_path = Path(data)
    if not yaml_path.is_absolute() and not yaml_path.exists():
        return None  # a name Ultralytics resolves itself (coco8.yaml): not ours to judge offline
    if not _readable(yaml_path):
        return str(yaml_path), "dataset file"
    try:
        if yaml_path.stat().st_size > MAX_DATA_YAML:
            return None
        spec = yaml.safe_load(_read_plain(yaml_path).decode(errors="replace"))
    except (OSError, yaml.YAMLError):
        return None  # unreadable as YAML: Ultralytics will say precisely what is wrong
    if not isinstance(spec, dict):
        return None
    root = _root(yaml_path, spec.get("path"))
    if root is not None and not root.exists():
        return str(root), "dataset directory"
    for key in ("train", "val"):
        for entry in _entries(spec.get(key)):
            target = Path(entry) if Path(entry).is_absolute() else (root or yaml_path.parent) / entry
            if not target.exists():
                return str(target), f"dataset {key} path"
    return None


def _root(yaml_path: Path, path) -> Optional[Path]:
    if not isinstance(path, str) or not path:
        return None
    p = Path(path)
    return p if p.is_absolute() else yaml_path.parent / p


def _entries(value) -> list[str]:
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v]
    return []


def _model_problem(model: str) -> Optional[tuple[str, str]]:
    p = Path(model)
    if p.exists():
        return None if _readable(p) else (str(p), "model file")
    if p.suffix in (".yaml", ".yml") and not p.is_absolute() and len(p.parts) == 1:
        return None  # yolov8n.yaml: Ultralytics builds it from its own package
    return str(p), "model file"  # a .pt it would have to download: missing on an offline server


def _readable(p: Path) -> bool:
    """A plain file we may open. A FIFO or device is not: opening one for reading would wait for
    a writer (O_NONBLOCK keeps the open itself from waiting; the type is checked on the descriptor)."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def _read_plain(p: Path) -> bytes:
    """A plain file's bytes (at most MAX_DATA_YAML); OSError for anything else (a FIFO swapped in)."""
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{p}: not a regular file")
        os.set_blocking(fd, True)
        return f.read(MAX_DATA_YAML)


def _in_child(owner: Optional[tuple[int, int]], data: str, model: Optional[str], name: str,
              deadline_s: float) -> Preflight:
    """Run the check in a forked child (as ``owner`` if given); answer through a pipe, with a deadline."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing here may take a lock another thread of the daemon could hold
        try:
            os.close(r)
            if owner is not None:
                _become(*owner)
            result = _check(data, model, name)
            os.write(w, json.dumps([result.missing, result.reason]).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        answer = _read_until(r, deadline_s)
    finally:
        os.close(r)
        if answer is None:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if answer is None:
        where = data if model is None else f"{data} or {model}"
        return Preflight(data, f"the filesystem holding {where} did not answer within {deadline_s:g}s "
                               "(a hung network mount?); the job waits for it")
    try:
        missing, reason = json.loads(answer)
    except ValueError:
        return Preflight()  # the check itself failed: let the attempt say what is wrong
    return Preflight(missing, reason)


def _become(uid: int, gid: int) -> None:
    try:
        os.initgroups(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def _read_until(fd: int, deadline_s: float) -> Optional[bytes]:
    """Everything written to ``fd`` until EOF, or None when the deadline passes first."""
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], deadline_s)
        if not ready:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
