"""The relearning attacker as a reusable loop: a short plain fine-tune of a model on a few images of a target (the
`relearning` attack's, and the stop rule's relearning probe's, `evaluation/relearn_probe.py`)."""

from __future__ import annotations

import contextlib

import torch

from ..data import StepSampler


@contextlib.contextmanager
def values_restored(params, grads: bool = False):
    """Inside the block `params` may be trained; afterwards each holds its value from before (and, with `grads`, its
    `.grad` too; without, gradients accumulated inside are kept: the lasting option's meta gradient)."""
    saved = [p.detach().clone() for p in params]
    kept = [None if p.grad is None else p.grad.detach().clone() for p in params] if grads else None
    try:
        yield
    finally:
        with torch.no_grad():
            for i, (p, value) in enumerate(zip(params, saved)):
                p.copy_(value)
                if kept is not None:
                    p.grad = kept[i]


def seeded_rows(data_set, k: int, seed: int) -> dict:
    """k rows of `data_set` (a seeded draw, repeated when it has fewer) as one batch dict of tensors."""
    order = torch.randperm(len(data_set), generator=torch.Generator().manual_seed(seed))
    items = [data_set[int(i)] for i in order[torch.arange(k) % len(order)]]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


class FineTune:
    """The relearning attacker on `model` (in place): a fresh Adam (lr `lr`) on its trainable parameters, batches of
    `batch_size` drawn from the rows of `images` (a batch dict) by a `StepSampler` seeded `sampler_seed`, the plain
    diffusion loss (antithetic timesteps, no condition dropout) with the draws of step i from seed `seed + i`.
    `advance(n)` takes n more steps; the network is left in eval mode."""

    def __init__(self, model, images: dict, lr: float, batch_size: int, sampler_seed: int, seed: int):
        self.model, self.seed, self.done = model, seed, 0
        self.optimizer = torch.optim.Adam([p for _, p in model.trainable_parameters()], lr=lr)
        rows = BatchRows(images)
        self.sampler = StepSampler(rows, min(batch_size, len(rows)), sampler_seed)

    def advance(self, steps: int) -> None:
        model = self.model
        model.network.train()
        for _ in range(steps):
            generator = torch.Generator(model.device).manual_seed(self.seed + self.done)
            loss = model.training_losses(self.sampler.batch(self.done, model.device), generator=generator,
                                         antithetic=True).mean()
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.done += 1
        model.network.eval()


class BatchRows(torch.utils.data.Dataset):
    """A batch dict of tensors as a data set of its rows (what StepSampler draws from)."""

    def __init__(self, batch: dict):
        self.batch = batch

    def __len__(self) -> int:
        return len(next(iter(self.batch.values())))

    def __getitem__(self, index):
        return {key: value[index] for key, value in self.batch.items()}
