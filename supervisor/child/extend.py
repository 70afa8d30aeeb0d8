"""``extend``: the checkpoint a resume starts from is rewritten to train to a new total of epochs."""

from __future__ import annotations

from pathlib import Path

from supervisor.child.reporter import Reporter


def set_checkpoint_epochs(path: Path, epochs: int, rep: Reporter) -> None:
    """``extend``: Ultralytics takes ``epochs`` from the checkpoint on resume and ignores an override,
    so the checkpoint itself is rewritten (atomically) to the new total. The LR schedule is then
    re-derived for that total when the trainer starts."""
    import io

    import torch

    from supervisor.child.atomic_files import atomic_write_bytes

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    old = ckpt["train_args"].get("epochs")
    if old == epochs:
        return
    ckpt["train_args"]["epochs"] = epochs
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    rep.note(f"extended: {path.name} now trains to {epochs} epochs (was {old}); the learning-rate "
             "schedule is rebuilt for the new total")
