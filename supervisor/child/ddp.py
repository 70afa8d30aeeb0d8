"""Multi-GPU (DDP) jobs: what the training child does in each rank, and in the process that launched them.

With ``device=0,1`` Ultralytics' trainer, in our child (the "launcher parent"), writes a script and a
cloudpickled state holding the trainer's callbacks, runs ``python -m torch.distributed.run`` on it
and waits. Every rank rebuilds the trainer from that state, so our callbacks run in every rank, each
with its own copy of the Reporter they close over; our SIGTERM handler does not (the ranks are
torchrun's children, in their own sessions). So (see supervisor/child/train.py):

- Rank 0 alone writes progress.json and the exit record. DDP synchronises every step (the gradient
  all_reduce, and the stop check below), so rank 0's heartbeat moves at the pace of the slowest
  rank, and a hung rank stops it: the daemon's stall detection needs nothing else.
- Every rank installs its own SIGTERM handler when its copy of the Reporter is unpickled (the first
  code of ours that runs there; ``on_pretrain_routine_start`` runs on rank 0 only). It sets a flag.
- At each batch end (and epoch end) the ranks ``all_reduce(MAX)`` their flags (``agree``), so all of
  them stop after the same batch, even when the TERM reached only some. Rank 0 saves once, at epoch
  level (mid-epoch saves are single-process), every rank waits at a barrier until that save and the
  exit record are on disk, then every rank exits PREEMPTED_EXIT_CODE.
- The launcher parent, on SIGTERM while torchrun runs, does not exit: it leaves a stop request file
  for ranks the signal missed (spawned after the daemon listed the job's processes, or a TERM sent to
  the parent alone) and waits. When torchrun then fails, the parent ends with the exit record rank 0
  wrote.
- The daemon's SIGTERM skips torchrun itself (supervisor/process/launcher.py): torchrun would TERM
  its workers and SIGKILL them 30 s later, whatever rank 0 was saving. It exits by itself once they do.

What this relies on in Ultralytics (checked by ``support_problem``): the DDP state carries the
callbacks, and the launch is ``-m torch.distributed.run``. Where either is not so, nothing here
runs and the behaviour is the earlier one (the TERM kills the ranks; the resume starts from the last
epoch-level last.pt). Otherwise only torchrun's environment (RANK, WORLD_SIZE) and torch.distributed
are used; torch is imported inside the functions that need it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from supervisor import safefs
from supervisor.process.torchrun import is_torch_launcher

STOP_REQUEST_NAME = "ddp-stop-request"    # beside the exit record; removed at each attempt's start


def current_rank() -> Optional[int]:
    """This process's global rank when it is one of several DDP ranks started by torchrun; else None."""
    try:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "-1"))
    except ValueError:
        return None
    return rank if world > 1 and rank >= 0 else None


def world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


# The exact Ultralytics versions the trainer internals we rely on were tested with (not a series: a patch
# release may change _do_train, save_model or the DDP launch). Add a version only after the tests pass on it.
TESTED_VERSIONS = ("8.4.190",)


def requested_gpus(device) -> int:
    """GPUs in a device request, read as Ultralytics' parse_device does ('[0, 1]', 'cuda:0,1', '-1,-1')."""
    text = str(device).lower()
    for junk in ("cuda:", "(", ")", "[", "]", "'", " "):
        text = text.replace(junk, "")
    return len([d for d in text.split(",") if d.lstrip("-").isdigit()])


def support_problem() -> Optional[str]:
    """None when Ultralytics launches DDP as this module expects; otherwise the one line that says why not."""
    try:
        import ultralytics
        from ultralytics.utils import dist
    except ImportError as exc:  # pragma: no cover - the child cannot train without it anyway
        return f"ultralytics not importable: {exc}"
    version = getattr(ultralytics, "__version__", "?")
    # The state it pickles holds the callbacks, and the script it writes hands them to each rank's trainer.
    file_constants = _constants(dist, "generate_ddp_file")
    shipped = "callbacks" in file_constants and any('_callbacks=state["callbacks"]' in c for c in file_constants)
    launched = "torch.distributed.run" in _constants(dist, "generate_ddp_command")
    if version in TESTED_VERSIONS and shipped and launched:
        return None
    return (f"ultralytics {version}: its multi-GPU launch was not tested with yolo-supervisor; a SIGTERM may "
            "end the ranks without a save (the resume starts from the last epoch-level checkpoint)")


def _constants(module, function: str) -> list[str]:
    """The string constants of ``module.function`` (dict keys come as a tuple)."""
    code = getattr(getattr(module, function, None), "__code__", None)
    found: list[str] = []
    for const in code.co_consts if code is not None else ():
        found += [c for c in (const if isinstance(const, tuple) else (const,)) if isinstance(c, str)]
    return found


def launcher_running() -> bool:
    """Whether this process has a live torch DDP launcher child (Ultralytics' multi-GPU launch)."""
    try:
        import psutil  # not at the top: the child may run on an interpreter without it
    except ImportError:
        return False
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return False
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE and is_torch_launcher(child.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


# --------------------------------------------------------------------------- the stop request file


def stop_request_path(exit_record: Path) -> Path:
    return Path(exit_record).with_name(STOP_REQUEST_NAME)


def request_stop(path: Path) -> None:
    """From the parent's SIGTERM handler: tell ranks that the signal may have missed."""
    try:
        safefs.write_atomic(path, f"{os.getpid()}\n".encode())
    except OSError as exc:  # the ranks still get the daemon's own TERM
        print(f"yolo-supervisor: could not write {path}: {exc!r}", file=sys.stderr, flush=True)


def stop_requested(path: Path) -> bool:
    return os.path.lexists(path)


def clear_stop_request(path: Path) -> None:
    """At the attempt's start: a request left by an earlier attempt must not stop this one."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # then the ranks stop at their first batch: say why
        print(f"yolo-supervisor: could not remove {path}: {exc!r}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- collectives


def agree(local: bool, device) -> bool:
    """True on every rank when any rank asks to stop: one tiny all_reduce(MAX), called by every rank
    at the same point (each batch end, each epoch end), so all ranks stop after the same batch.

    On the trainer's device: NCCL reduces only CUDA tensors, gloo (CPU) only CPU ones. The ``item()``
    waits for the GPU; rank 0 already does so every batch for its progress bar.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return local
    flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
    try:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    except Exception:  # noqa: BLE001 - a broken group: the next gradient all_reduce fails anyway
        return local
    return bool(flag.item())


def barrier(device) -> None:
    """Every rank waits here until all have arrived (rank 0: after its save and exit record).

    An all_reduce on the trainer's device, not ``dist.barrier()``: NCCL's barrier guesses the GPU
    from the rank number, which is another GPU (and a new CUDA context) for ``device=2,3``.
    Best effort: when it fails, the save it protects is already on disk.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        done = torch.zeros(1, dtype=torch.int32, device=device)
        dist.all_reduce(done)
        done.item()  # NCCL only enqueues the reduction: wait for it
    except Exception as exc:  # noqa: BLE001 - exiting is all that is left to do
        print(f"yolo-supervisor: rank {current_rank()}: barrier before exit failed: {exc!r}",
              file=sys.stderr, flush=True)
