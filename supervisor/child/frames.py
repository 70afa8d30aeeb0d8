"""Surgery on Ultralytics' running ``_do_train``: the locals a mid-epoch resume must set.

The batch index ``i`` comes from ``enumerate`` inside ``_do_train`` (it drives the warmup and the
running loss mean), so the trainer module's ``enumerate`` is shadowed; ``last_opt_step`` is a local,
written back into the running frame. Version-guarded by child/midepoch.py's ``support_problem``.
"""

from __future__ import annotations

import builtins
import sys
from typing import Any


def train_frame(trainer):
    """The running ``_do_train`` frame of ``trainer`` (callbacks run inside it)."""
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "_do_train" and f.f_locals.get("self") is trainer:
            return f
        f = f.f_back
    raise RuntimeError("not inside BaseTrainer._do_train")


def set_frame_local(frame, name: str, value: Any) -> None:
    """Write a local of a running frame (3.13+: f_locals writes through; before: LocalsToFast)."""
    if sys.version_info >= (3, 13):
        frame.f_locals[name] = value
        return
    import ctypes

    frame.f_locals[name] = value
    ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))


def shadow_enumerate(trainer_module, controller) -> None:
    """``_do_train`` looks ``enumerate`` up in its module first: count the resumed epoch from its batch."""
    def enumerate(iterable, start=0):  # noqa: A001 - deliberately shadows the builtin in one module
        if controller.empty_resumed_epoch(iterable):
            return builtins.enumerate(())
        return builtins.enumerate(iterable, start or controller.enumerate_start(iterable))

    trainer_module.enumerate = enumerate
