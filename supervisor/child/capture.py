"""A mid-epoch checkpoint's bytes, built by Ultralytics' own ``save_model`` (its format stays its own).

``save_model`` builds the checkpoint dict and writes last.pt/best.pt; during a mid-epoch save it
writes into memory instead (last.pt keeps meaning "a completed epoch") and ``torch.save`` adds
the supervisor's keys to its dict.
"""

from __future__ import annotations

from pathlib import PosixPath


def checkpoint_bytes(trainer, epoch: int, extra: dict) -> bytes:
    """Ultralytics' own checkpoint for ``epoch - 1`` completed epochs plus ``extra``, as bytes.

    ``save_model`` builds the dict and writes last.pt/best.pt: here it writes into memory instead
    (last.pt keeps meaning "a completed epoch"), and ``torch.save`` adds our keys to its dict.
    """
    import torch

    captured: dict[str, bytes] = {}
    real_save = torch.save

    def save_with_extra(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "train_args" in obj:
            obj = {**obj, **extra}
        return real_save(obj, f, *args, **kwargs)

    saved = (trainer.epoch, trainer.last, trainer.best, trainer.save_period, trainer.wdir)
    trainer.epoch = epoch - 1
    trainer.last, trainer.best = _Capture(captured, "last"), _Capture({}, "best")
    trainer.save_period = 0
    trainer.wdir = _NoMkdir(str(trainer.wdir))
    torch.save = save_with_extra
    try:
        trainer.save_model()
    finally:
        torch.save = real_save
        trainer.epoch, trainer.last, trainer.best, trainer.save_period, trainer.wdir = saved
    return captured["last"]


class _Capture:
    """Stands in for last.pt/best.pt during a mid-epoch save: keeps the bytes, writes nothing."""

    def __init__(self, into: dict, name: str):
        self.into, self.name = into, name

    def write_bytes(self, data) -> int:
        self.into[self.name] = bytes(data)
        return len(data)

    def exists(self) -> bool:
        return False


class _NoMkdir(PosixPath):
    def mkdir(self, *args, **kwargs) -> None:
        pass
