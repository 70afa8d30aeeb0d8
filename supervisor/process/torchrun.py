"""How torch's DDP launcher (torchrun) appears among a job's processes.

Pure stdlib: the daemon (launcher.signal_job) and the training child (supervisor/child/ddp.py)
both ask, and the child may run on an interpreter without psutil.
"""

from __future__ import annotations

from pathlib import Path

# Ultralytics runs ``python -m torch.distributed.run`` (``torch.distributed.launch`` before torch 1.9);
# people also run the ``torchrun`` script.
TORCH_LAUNCHER_MODULES = ("torch.distributed.run", "torch.distributed.launch")


def is_torch_launcher(cmdline: list[str]) -> bool:
    """Whether ``cmdline`` runs torch's DDP launcher (torchrun), which starts and watches the ranks."""
    if not cmdline:
        return False
    if Path(cmdline[0]).name == "torchrun" or (len(cmdline) > 1 and Path(cmdline[1]).name == "torchrun"):
        return True
    return any(a == "-m" and b in TORCH_LAUNCHER_MODULES for a, b in zip(cmdline, cmdline[1:]))
