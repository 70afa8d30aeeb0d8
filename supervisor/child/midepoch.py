"""Mid-epoch checkpoints for Ultralytics' trainer: save at a batch boundary, resume at the next batch.

Ultralytics saves once per epoch and resumes at the start of the epoch after the one in last.pt.
On an epoch of an hour, a kill loses up to an hour. This module, used only by the training child,
lets the child save every ``checkpoint_every`` seconds (and on SIGTERM) and resume exactly where the
save was taken. What "exactly" needs, and how each piece is restored (see ../shared/ULTRALYTICS.md):

- **Which images remain.** Ultralytics' single-GPU loader shuffles from one generator seeded once,
  so "the rest of epoch k" cannot be named after a restart. ``PassOrder`` replaces its sampler: each
  pass over the data has a key, and the key alone fixes the permutation (like
  ``DistributedSampler.set_epoch``). A resumed pass drops the first ``k`` batches *in the sampler*,
  so skipped images are never loaded, and ``ResumableLoader`` yields exactly the remaining batches
  (child/sample_order.py).
- **The batch index.** ``i`` comes from ``enumerate`` inside ``BaseTrainer._do_train`` and drives
  the warmup (``ni = i + nb * epoch``) and the running loss mean: the trainer module's ``enumerate``
  is shadowed so the resumed epoch counts from ``k`` (child/frames.py).
- **The accumulation step.** ``last_opt_step`` is a local of ``_do_train``: the resumed run gets
  the saved value written back into that frame before its first batch. A save (timed or on
  SIGTERM) happens at the first batch end it is due, with the gradients accumulated since the last
  optimizer step (``GRADS_KEY``, None right after a step), which the resume puts back.
- **Model, EMA, optimizer, scaler, best fitness, stopper**: Ultralytics' own checkpoint dict (taken
  from its ``save_model`` so the format stays its own), plus the raw model weights (its resume
  loads the EMA into the model) and a plain record (``MIDEPOCH_KEY``) the daemon reads without torch
  (child/capture.py).
- **Atomic writes.** Every checkpoint file the child writes (this one, and Ultralytics' own last.pt,
  best.pt, epochN.pt and the final stripped files) goes to a temp file in the same directory,
  is fsynced and renamed over the old one (child/atomic_files.py).

This module is the controller that ties them together: when a save is due, what a save records,
and what a resume restores.

All of this depends on trainer internals, so ``support_problem`` checks the installed version and
the shape of ``_do_train``; on anything else the child falls back to epoch-level checkpoints and says
so once. Multi-GPU (DDP) jobs always use epoch-level checkpoints: the ranks do stop at the same batch
on SIGTERM (supervisor/child/ddp.py), but every rank would also have to rebuild its sampler and
restore its loop state alike, which is not built.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from supervisor.child.atomic_files import atomic_path, atomic_write_bytes, drop_partial_files, make_strip_atomic
from supervisor.child.capture import checkpoint_bytes
from supervisor.child.ddp import TESTED_VERSIONS, requested_gpus  # the Ultralytics versions tested
from supervisor.child.frames import set_frame_local, shadow_enumerate, train_frame
from supervisor.child.sample_order import Pass, PassOrder, rebuild_with_order
# the plain record (MIDEPOCH_KEY) is the daemon's to read: its key and the file names are the contract's
from supervisor.contract import MIDEPOCH_KEY, MIDEPOCH_NAME

MODEL_KEY = "yolo_supervisor_model"       # the raw (non-EMA) model weights at the save
GRADS_KEY = "yolo_supervisor_grads"       # gradients accumulated since the last optimizer step (or None)
RECORD_FORMAT = 1
WORLD_SIZE = 1  # mid-epoch states are single-process (DDP jobs use epoch-level checkpoints)
_DO_TRAIN_LOCALS = {"i", "nb", "epoch", "last_opt_step", "batch"}


def support_problem(device: str = "cpu") -> Optional[str]:
    """None when mid-epoch checkpoints work here; otherwise the one line that says why not."""
    if requested_gpus(device) > 1:
        return "multi-GPU (DDP) jobs use epoch-level checkpoints: mid-epoch saves are single-process only"
    try:
        import ultralytics
        from ultralytics.engine import trainer as trainer_module
    except ImportError as exc:  # pragma: no cover - the child cannot train without it anyway
        return f"ultralytics not importable: {exc}"
    version = getattr(ultralytics, "__version__", "?")
    if os.environ.get("YOLO_SUPERVISOR_PRETEND_ULTRALYTICS"):  # TEST ONLY: simulate another version
        version = os.environ["YOLO_SUPERVISOR_PRETEND_ULTRALYTICS"]
    if version not in TESTED_VERSIONS:
        return (f"ultralytics {version} is not a version mid-epoch checkpoints were tested with "
                f"({', '.join(TESTED_VERSIONS)}): epoch-level checkpoints only")
    odd = _unexpected_shape(trainer_module.BaseTrainer)
    if odd:
        return f"ultralytics {version}: BaseTrainer.{odd} has an unexpected shape: epoch-level checkpoints only"
    return None


def _unexpected_shape(trainer_class) -> Optional[str]:
    """The trainer method that does not look as the mid-epoch machinery needs, or None.

    ``_do_train``: the loop locals it reads and sets, and the ``enumerate`` it shadows; ``save_model``:
    builds the checkpoint with ``torch.save`` and writes it with ``write_bytes`` (the atomic wrap and
    the mid-epoch capture rely on both); ``_load_checkpoint_state(ckpt)``: the mid-epoch resume calls it."""
    def code(name):
        return getattr(getattr(trainer_class, name, None), "__code__", None)

    train = code("_do_train")
    names = set(train.co_varnames) | set(train.co_cellvars) if train is not None else set()
    if train is None or not _DO_TRAIN_LOCALS <= names or "enumerate" not in train.co_names:
        return "_do_train"
    save = code("save_model")
    if save is None or save.co_argcount != 1 or not {"save", "write_bytes", "last"} <= set(save.co_names):
        return "save_model"
    load = code("_load_checkpoint_state")
    if load is None or load.co_argcount != 2 or not {"optimizer", "ema", "load_state_dict"} <= set(load.co_names):
        return "_load_checkpoint_state"
    return None


# --------------------------------------------------------------------------- the controller


@dataclass
class Position:
    """Where a saved state resumes: the 0-based epoch and the next batch index within it."""

    epoch: int
    next_batch: int


class MidEpoch:
    """Installed on one trainer: saves on request or on a timer, resumes from a record."""

    def __init__(self, interval_s: float, record: Optional[dict] = None,
                 on_saved: Optional[Callable[[dict, float], None]] = None,
                 note: Callable[[str], None] = print):
        self.interval_s = interval_s            # 0: no timed saves (a SIGTERM still saves mid-epoch)
        self.record = record                    # the mid-epoch record resumed from, if any
        self.on_saved = on_saved
        self.note = note
        self.last_save = time.monotonic()
        self.trainer = None
        self.loader = None
        self.restore_pending = record is not None
        self.pending_grads = None               # gradients to put back before the first resumed batch
        self.seed = int(record["seed"]) if record else None
        self.resume_skip = 0                    # batches of the first epoch left out (0: epoch-level)
        self.batch_changed = False              # resumed with another batch size than the record's
        self.whole_pass = False                 # the record's pass was trained whole: only validation remains

    # -- installation ---------------------------------------------------------
    def install(self, trainer) -> None:
        """Called from on_pretrain_routine_start, before the trainer builds anything."""
        from ultralytics.engine import trainer as trainer_module

        self.trainer = trainer
        drop_partial_files(Path(str(trainer.wdir)))
        trainer.wdir = atomic_path(trainer.wdir)
        trainer.last, trainer.best = trainer.wdir / "last.pt", trainer.wdir / "best.pt"
        make_strip_atomic(trainer_module)
        shadow_enumerate(trainer_module, self)
        self._wrap(trainer, "get_dataloader", self._get_dataloader)
        self._wrap(trainer, "resume_training", self._resume_training)

    @staticmethod
    def _wrap(trainer, name: str, replacement) -> None:
        original = getattr(trainer, name)
        setattr(trainer, name, lambda *a, **kw: replacement(original, *a, **kw))

    def _get_dataloader(self, original, dataset_path, batch_size=16, rank=0, mode="train"):
        loader = original(dataset_path, batch_size=batch_size, rank=rank, mode=mode)
        if mode != "train" or rank not in (-1, 0) or getattr(loader, "iterator", 0) is not None:
            return loader  # DDP keeps its DistributedSampler; a started loader is not ours to rebuild
        shuffle = type(loader.sampler).__name__ == "RandomSampler"
        seed = self.seed if self.seed is not None else int(getattr(self.trainer.args, "seed", 0) or 0)
        self.seed = seed
        resume = self._resume_pass(len(loader.dataset), loader.batch_size, shuffle)
        first_key = self.trainer.start_epoch if resume is None else 0
        order = PassOrder(len(loader.dataset), seed, shuffle, loader.batch_size, resume, first_key)
        self.loader = rebuild_with_order(loader, order)
        return self.loader

    def _resume_pass(self, n: int, batch_size: int, shuffle: bool) -> Optional[Pass]:
        """The pass to start with when resuming mid-epoch, or None (and why) when it cannot be exact."""
        rec, self.resume_skip = self.record, 0
        if rec is None or not self.restore_pending:
            return None
        # A record another Ultralytics wrote may mean other loop state: resume at the epoch level.
        changed = [f"{k} {rec.get(k, same)} -> {v}" for k, v, same in
                   (("dataset_len", n, None), ("shuffle", shuffle, None), ("world_size", WORLD_SIZE, WORLD_SIZE),
                    ("ultralytics", _ultralytics_version(), None))
                   if rec.get(k, same) != v]
        if changed:
            self.note(f"mid-epoch resume not exact ({', '.join(changed)}): epoch {rec['epoch'] + 1} "
                      "is trained again from its start")
            self.restore_pending = False
            return Pass(int(rec["pass_key"]) + 1)
        # The same order of the same images: the position is an image, whatever the batch size
        # (on_oom: reduce_batch, edit batch= --force). Batches of the new size skip what was trained.
        images = int(rec["next_batch"]) * int(rec["batch_size"])
        if images >= n:
            # Saved on SIGTERM after the last batch: the epoch resumes with no batch to train (see
            # empty_resumed_epoch), and the next epoch draws the next pass.
            self.whole_pass = True
            return Pass(int(rec["pass_key"]) + 1)
        self.resume_skip = images // batch_size
        if int(rec["batch_size"]) != batch_size:
            self.batch_changed = True
            again = images - self.resume_skip * batch_size
            self.note(f"batch {rec['batch_size']} -> {batch_size}: epoch {rec['epoch'] + 1} goes on at image "
                      f"{images + 1} of {n} (batch {self.resume_skip + 1} of the new size)"
                      + (f"; {again} image(s) trained again" if again else ""))
        return Pass(int(rec["pass_key"]), self.resume_skip)

    def _resume_training(self, original, ckpt):
        rec = (ckpt or {}).get(MIDEPOCH_KEY) if isinstance(ckpt, dict) else None
        t = self.trainer
        if rec is None or not t.resume:
            return original(ckpt)
        # Ultralytics' own resume asserts the epoch is complete; this is its body for epoch rec["epoch"].
        t._load_checkpoint_state(ckpt)
        if ckpt.get(MODEL_KEY) is not None:
            _unwrap(t.model).load_state_dict(ckpt[MODEL_KEY])
        self.pending_grads = ckpt.get(GRADS_KEY) if self.resume_skip or self.whole_pass else None
        t.start_epoch = int(rec["epoch"])
        if self.whole_pass:
            self.note(f"resuming epoch {t.start_epoch + 1} after its last batch: only its validation and save "
                      "remain")
        else:
            self.note(f"resuming mid-epoch: epoch {t.start_epoch + 1} at batch {self.resume_skip + 1}"
                      f" of {rec['batches']}" if self.resume_skip else
                      f"resuming at the start of epoch {t.start_epoch + 1}")
        from ultralytics.utils.torch_utils import unwrap_model

        model = unwrap_model(t.model)
        if getattr(getattr(model, "student_model", model).model[-1], "one2one_cv2", None) is not None:
            model.criterion = model.init_criterion()
            model.criterion.updates = t.start_epoch - 1
            model.criterion.update()

    # -- per batch -------------------------------------------------------------
    def enumerate_start(self, iterable) -> int:
        """Where ``i`` starts for this epoch: the saved batch in the resumed epoch, else 0."""
        if iterable is self.loader and self.resume_skip and self.trainer.epoch == self.trainer.start_epoch:
            return self.resume_skip
        return 0

    def empty_resumed_epoch(self, iterable) -> bool:
        """The resumed epoch's pass was trained whole before the SIGTERM: no batch to train, the loader is
        not touched (its first pass is the next epoch's); the loop state (the gradients accumulated since
        the last optimizer step) is put back as before a first resumed batch."""
        t = self.trainer
        if not (self.whole_pass and iterable is self.loader and t.epoch == t.start_epoch):
            return False
        if self.restore_pending:
            self._restore_loop_state(t)
            self.restore_pending = False
            model = _unwrap(t.model)
            if getattr(model, "criterion", None) is None:  # built by the first loss call, and none comes
                model.criterion = model.init_criterion()
        return True

    def on_epoch_end(self, trainer) -> None:
        """After an empty resumed epoch: the losses the validation and results.csv report are the saved
        pass's (Ultralytics reset them at the epoch start and no batch set them again)."""
        rec = self.record
        if not (self.whole_pass and trainer.epoch == trainer.start_epoch and rec and rec.get("tloss")):
            return
        import torch

        trainer.tloss = {k: torch.tensor(v, device=trainer.device) for k, v in rec["tloss"].items()}
        trainer.loss_items = dict(trainer.tloss)
        trainer.loss_names = trainer.loss_names or tuple(trainer.tloss)
        trainer.loss = sum(trainer.tloss.values())  # read by validate() (a fitness fallback) and the NaN check

    def on_batch_start(self, trainer) -> None:
        if self.restore_pending and self.resume_skip and trainer.epoch == trainer.start_epoch:
            self._restore_loop_state(trainer)
        self.restore_pending = False

    def _restore_loop_state(self, trainer) -> None:
        import torch

        rec = self.record
        # After a batch change the saved step index counts other batches: step after the first resumed
        # batch instead, with the accumulated gradients (a sum over images, valid at any batch size), as
        # Ultralytics does after its own OOM halving.
        last_opt_step = -1 if self.batch_changed else int(rec["last_opt_step"])
        set_frame_local(train_frame(trainer), "last_opt_step", last_opt_step)
        grads = self.pending_grads
        if grads is not None:  # after _do_train's zero_grad(): the accumulated part of the step comes back
            for param, grad in zip(_unwrap(trainer.model).parameters(), grads):
                param.grad = None if grad is None else grad.to(param.device)
        self.pending_grads = None
        if rec.get("tloss"):
            trainer.tloss = {k: torch.tensor(v, device=trainer.device) for k, v in rec["tloss"].items()}

    def due(self, preempt: bool) -> bool:
        """Save now? A SIGTERM, or ``interval_s`` since the last save: at this batch end.

        Not later: waiting for the next optimizer step would let a kill cost up to ``accumulate - 1``
        batches more than ``checkpoint_every``; the accumulated gradients are saved instead."""
        if preempt:
            return True
        return self.interval_s > 0 and time.monotonic() - self.last_save >= self.interval_s

    def epoch_saved(self) -> None:
        self.last_save = time.monotonic()  # epoch-end saves count as saves

    def save(self, trainer, whole_pass: bool = False) -> Optional[dict]:
        """Write weights/midepoch.pt for the batch that just ended; None at an epoch's last batch, unless
        ``whole_pass`` (a SIGTERM at the last batch or during validation: the pass is trained, and the
        resume runs only the validation and the epoch's save)."""
        frame = train_frame(trainer)
        loc = frame.f_locals
        i, nb, epoch, last_opt_step = int(loc["i"]), int(loc["nb"]), int(loc["epoch"]), int(loc["last_opt_step"])
        if (i + 1 >= nb and not whole_pass) or self.loader is None or self.loader.current is None:
            return None  # the epoch-end save is moments away and is the real one
        started = time.monotonic()
        order: PassOrder = self.loader.sampler
        record = {
            "format": RECORD_FORMAT, "epoch": epoch, "next_batch": i + 1, "batches": nb,
            "pass_key": self.loader.current.key, "seed": self.seed, "shuffle": order.shuffle,
            "dataset_len": order.n, "batch_size": order.batch_size, "world_size": WORLD_SIZE,
            "last_opt_step": last_opt_step, "accumulate": int(trainer.accumulate),
            "grads_pending": last_opt_step != i + nb * epoch,
            "tloss": _floats(trainer.tloss), "saved_at": time.time(),
            "ultralytics": _ultralytics_version(),
        }
        model = _unwrap(trainer.model)
        grads = [p.grad for p in model.parameters()] if record["grads_pending"] else None
        data = checkpoint_bytes(trainer, epoch, {MIDEPOCH_KEY: record, MODEL_KEY: model.state_dict(),
                                                  GRADS_KEY: grads})
        atomic_write_bytes(Path(str(trainer.wdir)) / MIDEPOCH_NAME, data)
        self.epoch_saved()
        seconds = self.last_save - started
        if self.on_saved:
            self.on_saved({**record, "size": len(data)}, seconds)
        return record


def _unwrap(model):
    from ultralytics.utils.torch_utils import unwrap_model

    return unwrap_model(model)


def _floats(tloss) -> Optional[dict[str, float]]:
    if tloss is None:
        return None
    if isinstance(tloss, dict):
        return {str(k): float(v) for k, v in tloss.items()}
    return None


def _ultralytics_version() -> str:
    import ultralytics

    return getattr(ultralytics, "__version__", "?")
