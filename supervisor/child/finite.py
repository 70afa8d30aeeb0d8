"""Every checkpoint the child writes says whether the weights were finite when it was saved.

Ultralytics' ``save_model`` replaces NaN/Inf in the EMA with numbers before it writes, so a state
saved after a divergence looks whole. The daemon never unpickles a checkpoint, so the child says
it: a plain bool at the top level of the checkpoint (``FINITE_KEY``), which the daemon's verifier
reads and a ``False`` keeps out of the vault and out of every resume (probes/checkpoint.py).
"""

from __future__ import annotations

from supervisor.contract import FINITE_KEY


def record_finiteness(trainer) -> None:
    """Wrap ``trainer.save_model`` (last.pt, best.pt, epochN.pt and the mid-epoch state alike)."""
    original = trainer.save_model

    def save_model(*args, **kwargs):
        import torch

        finite = weights_finite(trainer)
        real_save = torch.save

        def save_marked(obj, f, *a, **kw):
            if isinstance(obj, dict) and "train_args" in obj:
                obj = {**obj, FINITE_KEY: finite}
            return real_save(obj, f, *a, **kw)

        torch.save = save_marked  # save_model builds its dict inside: this is where it can be marked
        try:
            return original(*args, **kwargs)
        finally:
            torch.save = real_save

    trainer.save_model = save_model


def weights_finite(trainer) -> bool:
    """The live model's parameters, before Ultralytics clamps anything: one device sync in all."""
    import torch
    from ultralytics.utils.torch_utils import unwrap_model

    params = [p.detach() for p in unwrap_model(trainer.model).parameters()]
    if not params:
        return True
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())
