"""Deterministic batch sampling keyed by the step number, so a resumed run sees exactly the same batches."""

from __future__ import annotations

import torch


class StepSampler:
    """Epoch-wise shuffled batches of a data set, addressable by global step.

    The permutation of epoch e is drawn from `seed` and `e`, so `batch(step)` needs no state: a run resumed at
    step s reads the batches an uninterrupted run would have read. In a multi-process run every process builds the
    same global batch and keeps its own slice (rank::world_size), so the global batch does not depend on the number
    of processes.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if len(dataset) == 0:
            raise ValueError("cannot sample batches from an empty data set")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(len(self.dataset), generator=g)
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        """Global-batch indices for `step` (wrapping across epochs), this process's slice only."""
        n = len(self.dataset)
        start = step * self.batch_size
        positions = torch.arange(start, start + self.batch_size)
        chunks = [self._permutation(int(e))[positions[positions // n == e] % n] for e in torch.unique(positions // n)]
        return torch.cat(chunks)[self.rank::self.world_size]

    def batch(self, step: int, device=None) -> dict:
        items = self.dataset[self.indices(step)]
        return {k: v.to(device) if device is not None else v for k, v in items.items()}
