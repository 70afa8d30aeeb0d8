"""Classify how an attempt ended, from its exit status, exit record, progress and log tail.

Pure: the daemon reads the files and the kernel log and passes the facts in.
"""

from __future__ import annotations

import os
import re
import signal as _signal
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from supervisor import safefs
from supervisor.contract import ExitRecord
from supervisor.jobs.states import PREEMPTED_EXIT_CODE, Cause

CUDA_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED")
TRACEBACK = "Traceback (most recent call last)"
# Ultralytics gave up on a non-finite loss after its own in-process recoveries (BaseTrainer._handle_nan_recovery).
DIVERGED = re.compile(r"NaN persisted for \d+ epochs|corrupted with NaN/Inf weights")
# Before the first batch, only Ultralytics' own refusals of the arguments, the model or the dataset are
# configuration errors: a retry cannot fix them. Everything else (a stale NFS handle, a CUDA init error
# during a GPU reset, an NCCL timeout, a DataLoader worker killed) may pass, and is retried.
CONFIG_EXCEPTIONS = frozenset({
    "SyntaxError", "TypeError", "ValueError", "KeyError", "FileNotFoundError", "NotADirectoryError",
    "IsADirectoryError", "ModuleNotFoundError", "NotImplementedError",
})
ULTRALYTICS_DATASET_ERROR = re.compile(r"Dataset '.*' (error|images not found)")
# Transient whatever the exception's type: the same words inside a dataset error are not the user's fault.
TRANSIENT = re.compile(
    r"Stale file handle|Errno (5|110|112|113|116)\b|Input/output error|CUDA error|CUDA driver|"
    r"NCCL|DataLoader worker|timed out|Connection (reset|refused)|CUDNN_STATUS_INTERNAL_ERROR")
LOG_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class Classified:
    cause: Cause
    detail: str


def signal_name(sig: Optional[int]) -> str:
    try:
        return _signal.Signals(sig).name if sig else "?"
    except ValueError:
        return f"signal {sig}"


def classify(exit_code: Optional[int], sig: Optional[int], exit_record: Optional[ExitRecord],
             log_tail: str, reached_training: bool, kernel_oom_kill: bool) -> Classified:
    """The cause of an attempt's end; ``detail`` is a one-line human reason."""
    if exit_code is None and sig is None and exit_record is not None:
        exit_code = exit_record.exit_code  # re-adopted: the child's own record
    if exit_code == 0:
        return Classified(Cause.COMPLETED, "exit 0")
    if exit_code == PREEMPTED_EXIT_CODE:
        how = (exit_record.preempted if exit_record else None) or ""
        return Classified(Cause.PREEMPTED, f"SIGTERM: resumable checkpoint saved ({how})".replace(" ()", ""))
    oom_line = _last_match(CUDA_OOM, log_tail)
    if oom_line:
        return Classified(Cause.CUDA_OOM, oom_line)
    if sig == _signal.SIGKILL or (exit_code is None and sig is None):
        if kernel_oom_kill:
            return Classified(Cause.HOST_OOM, "SIGKILL by the kernel OOM killer (host memory)")
        unknown = " (exit status unknown: re-adopted process left no exit record)" if sig is None else ""
        return Classified(Cause.KILLED, f"SIGKILL{unknown}")
    if sig == _signal.SIGTERM:
        return Classified(Cause.TERMINATED, "SIGTERM before a checkpoint could be saved")
    error = _error_line(exit_record, log_tail)
    if sig is None and DIVERGED.search(error):
        return Classified(Cause.DIVERGED, f"the loss stayed non-finite after Ultralytics' own recoveries: {error}")
    if sig is None and not reached_training and (TRACEBACK in log_tail or (exit_record and exit_record.exception)):
        if is_configuration_error(error):
            return Classified(Cause.CONFIG_ERROR, f"failed before the first epoch: {error}")
        return Classified(Cause.SETUP_FAILED, f"failed before the first batch: {error}")
    if sig is not None:
        return Classified(Cause.CRASHED, f"killed by {signal_name(sig)}")
    return Classified(Cause.CRASHED, f"exit {exit_code}: {error}")


def is_configuration_error(error: str) -> bool:
    """Whether an error line (``Type: message``) is Ultralytics refusing the job as written."""
    if TRANSIENT.search(error):
        return False
    kind = error.split(":", 1)[0].strip().rsplit(".", 1)[-1]
    return kind in CONFIG_EXCEPTIONS or bool(ULTRALYTICS_DATASET_ERROR.search(error))


def _last_match(pattern: re.Pattern, text: str) -> Optional[str]:
    for line in reversed(text.splitlines()):
        if pattern.search(line):
            return line.strip()[:300]
    return None


def _error_line(exit_record: Optional[ExitRecord], log_tail: str) -> str:
    """The exception line: from the exit record when there is one, else the log's last line."""
    if exit_record and exit_record.exception:
        return f"{exit_record.exception}: {exit_record.message or ''}".strip()[:500]
    lines = [ln.strip() for ln in log_tail.splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "no output"


def read_log_tail(path: Path, limit: int = LOG_TAIL_BYTES, since_offset: int = 0) -> str:
    """The last ``limit`` bytes of the log written after ``since_offset`` (this attempt only)."""
    try:
        with os.fdopen(safefs.open_regular(path), "rb") as f:  # the job's folder: follow no link
            size = f.seek(0, 2)
            f.seek(max(since_offset, size - limit))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def kernel_oom_killed(pid: int) -> bool:
    """Whether the kernel log records an OOM kill of ``pid`` (needs read access to /dev/kmsg)."""
    pattern = re.compile(rf"(Killed process {pid}\b|oom-kill:.*\bpid={pid}\b)")
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        while True:
            try:
                record = os.read(fd, 8192).decode("utf-8", errors="replace")
            except BlockingIOError:
                return False
            except OSError:  # EPIPE: a record was overwritten; keep reading
                continue
            if not record:
                return False
            if pattern.search(record):
                return True
    finally:
        os.close(fd)
