"""The pure classifiers: how an attempt ended, and when silence means a hang."""

import signal

import pytest

from supervisor.jobs.states import PREEMPTED_EXIT_CODE, Cause
from supervisor.contract import ExitRecord, Progress, from_json
from supervisor.probes.progress import AUTO_MULTIPLE, stall_verdict
from supervisor.process.classify import classify

TRACE = "Traceback (most recent call last):\n  File x\nFileNotFoundError: Dataset 'd.yaml' not found\n"
OOM = "Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB\n"


@pytest.mark.parametrize("code, sig, record, tail, reached, kernel_oom, cause", [
    (0, None, None, "", True, False, Cause.COMPLETED),
    (PREEMPTED_EXIT_CODE, None, {"preempted": "mid-epoch save"}, "", True, False, Cause.PREEMPTED),
    (1, None, None, OOM, True, False, Cause.CUDA_OOM),
    (1, None, None, OOM, False, False, Cause.CUDA_OOM),          # OOM while building the model: still OOM
    (None, signal.SIGKILL, None, "", True, True, Cause.HOST_OOM),
    (None, signal.SIGKILL, None, "", True, False, Cause.KILLED),
    (None, signal.SIGTERM, None, "", True, False, Cause.TERMINATED),
    (1, None, None, TRACE, False, False, Cause.CONFIG_ERROR),
    (1, None, None, TRACE, True, False, Cause.CRASHED),           # after training began: a crash, retried
    (None, signal.SIGSEGV, None, "", True, False, Cause.CRASHED),
    (3, None, None, "", False, False, Cause.CRASHED),              # no traceback: not a config error
    # before the first batch, only Ultralytics' refusals of the job are configuration errors
    (1, None, None, "Traceback (most recent call last):\nOSError: [Errno 116] Stale file handle\n", False, False,
     Cause.SETUP_FAILED),
    (1, None, None, "Traceback (most recent call last):\nRuntimeError: CUDA error: unknown error\n", False, False,
     Cause.SETUP_FAILED),
    (1, None, None, "Traceback (most recent call last):\ntorch.distributed.DistBackendError: NCCL error\n", False,
     False, Cause.SETUP_FAILED),
    (1, None, None, "Traceback (most recent call last):\nSyntaxError: 'epoch' is not a valid YOLO argument.\n",
     False, False, Cause.CONFIG_ERROR),
    (1, None, None, "Traceback (most recent call last):\nRuntimeError: Dataset 'x.yaml' error ❌ missing\n", False,
     False, Cause.CONFIG_ERROR),
    (1, None, None, "Traceback (most recent call last):\nRuntimeError: Dataset 'x.yaml' error ❌ [Errno 116] "
                    "Stale file handle\n", False, False, Cause.SETUP_FAILED),
    # Ultralytics gave up on a NaN loss: diverged, wherever it happened
    (1, None, None, "Traceback (most recent call last):\nRuntimeError: Training failed: NaN persisted for 4 "
                    "epochs\n", True, False, Cause.DIVERGED),
    (1, None, {"exception": "RuntimeError", "message": "Checkpoint last.pt is corrupted with NaN/Inf weights"},
     "Traceback (most recent call last):\n", True, False, Cause.DIVERGED),
    # re-adopted attempts: no exit status of ours, the child's exit record tells
    (None, None, {"exit_code": 0}, "", True, False, Cause.COMPLETED),
    (None, None, {"exit_code": 75, "preempted": "x"}, "", True, False, Cause.PREEMPTED),
    (None, None, None, "", True, False, Cause.KILLED),
])
def test_classify(code, sig, record, tail, reached, kernel_oom, cause):
    assert classify(code, sig, from_json(ExitRecord, record), tail, reached, kernel_oom).cause is cause


def test_config_error_names_the_exception():
    record = ExitRecord(exception="FileNotFoundError", message="Dataset 'd.yaml' not found")
    out = classify(1, None, record, TRACE, False, False)
    assert out.cause is Cause.CONFIG_ERROR and "Dataset 'd.yaml' not found" in out.detail


def verdict(progress, now, **kw):
    args = dict(stall_timeout_cfg="auto", floor=60.0, first_batch_timeout=600.0)
    args.update(kw)
    return stall_verdict(from_json(Progress, progress), now, started_at=0.0, **args)


def test_before_the_first_batch_the_long_allowance_applies():
    assert not verdict({"updated_at": 10}, now=500).stalled
    v = verdict({"updated_at": 10}, now=700)
    assert v.stalled and "before the first batch" in v.reason


def test_auto_timeout_is_a_multiple_of_the_longest_gap_with_a_floor():
    p = {"first_batch_at": 5, "updated_at": 100, "max_gap_s": 40, "epoch": 3, "batch": 7, "batches": 9,
         "phase": "validating"}
    assert verdict(p, now=100 + AUTO_MULTIPLE * 40 - 1).timeout_s == AUTO_MULTIPLE * 40
    assert not verdict(p, now=100 + AUTO_MULTIPLE * 40 - 1).stalled
    v = verdict(p, now=100 + AUTO_MULTIPLE * 40 + 1)
    assert v.stalled and "epoch 3 batch 7/9" in v.reason
    quick = dict(p, max_gap_s=0.5)
    assert verdict(quick, now=150).timeout_s == 60 and not verdict(quick, now=150).stalled


def test_a_fixed_timeout_overrides_auto():
    p = {"first_batch_at": 5, "updated_at": 100, "max_gap_s": 400}
    assert verdict(p, now=111, stall_timeout_cfg=10).stalled
