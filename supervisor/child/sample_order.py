"""The sample order of a resumable pass: which images remain in an interrupted epoch.

Ultralytics' single-GPU loader shuffles from one generator seeded once, so "the rest of epoch k"
cannot be named after a restart. ``PassOrder`` replaces its sampler: each pass over the data has a
key, and the key alone fixes the permutation (like ``DistributedSampler.set_epoch``). A resumed
pass drops the first ``k`` batches *in the sampler*, so skipped images are never loaded, and the
loader ``rebuild_with_order`` makes yields exactly the remaining batches. Used by child/midepoch.py.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Optional


@dataclass
class Pass:
    """One pass over the training set: ``key`` names its permutation, ``skip`` batches are left out."""

    key: int
    skip: int = 0


class PassOrder:
    """A sampler whose order is a pure function of (seed, pass key).

    Passes are counted here, not read from the trainer's epoch: with ``workers > 0`` the loader draws
    the next pass before the current epoch ends. Started passes queue up until the loader says which
    one an epoch consumes (``take_started``).
    """

    def __init__(self, n: int, seed: int, shuffle: bool, batch_size: int, resume: Optional[Pass] = None,
                 first_key: int = 0):
        self.n, self.seed, self.shuffle, self.batch_size = n, seed, shuffle, batch_size
        self.resume = resume                 # the pass to start with, until an epoch consumes it
        self._resume_drawn = False           # whether the current iterator already drew it
        self.next_key = resume.key if resume else first_key
        self.started: deque[Pass] = deque()

    def __len__(self) -> int:
        return self.n  # the full pass: Ultralytics reads nb = len(loader) once

    def order(self, key: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        import torch

        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + key) % (1 << 63))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        if self.resume is not None and not self._resume_drawn:
            p, self._resume_drawn = self.resume, True
        else:
            p = Pass(self.next_key)
        self.next_key = p.key + 1
        self.started.append(p)
        return iter(self.order(p.key)[p.skip * self.batch_size:])

    def take_started(self) -> Pass:
        p = self.started.popleft()
        if p is self.resume:
            self.resume = None
        return p

    def drop_started(self) -> None:
        """The loader's iterator was dropped: passes drawn ahead are gone (an unconsumed resume stays)."""
        self.started.clear()
        self._resume_drawn = False


def pass_batches(n: int, batch_size: int, skip: int, drop_last: bool) -> int:
    left = max(0, n - skip * batch_size)
    return left // batch_size if drop_last else math.ceil(left / batch_size)


def resumable_loader_class():
    from ultralytics.data.build import InfiniteDataLoader

    class ResumableLoader(InfiniteDataLoader):
        """Ultralytics' endless loader over a ``PassOrder``: one epoch consumes exactly one pass."""

        current: Optional[Pass] = None

        def __iter__(self):
            if self.iterator is None:
                self.iterator = self._get_iterator()
            order: PassOrder = self.sampler
            first = next(self.iterator)           # draws the pass this epoch consumes (workers=0)
            self.current = order.take_started()
            yield first
            for _ in range(pass_batches(order.n, order.batch_size, self.current.skip, self.drop_last) - 1):
                yield next(self.iterator)

        def reset(self):
            super().reset()
            self.sampler.drop_started()

    return ResumableLoader


def rebuild_with_order(loader, order: PassOrder):
    """The same loader (dataset, workers, collate, seeds) over ``order``; ``loader`` never started."""
    cls = resumable_loader_class()
    extra = {"prefetch_factor": loader.prefetch_factor} if loader.num_workers > 0 else {}
    return cls(dataset=loader.dataset, batch_size=loader.batch_size, shuffle=False,
               num_workers=loader.num_workers, sampler=order, pin_memory=loader.pin_memory,
               collate_fn=loader.collate_fn, worker_init_fn=loader.worker_init_fn,
               generator=loader.generator, drop_last=loader.drop_last, **extra)
