"""The optimizer and the update rule (masked gradients, clip, step, masked-out elements restored)."""

from __future__ import annotations

import torch

from ..errors import UserError


def make_optimizer(params, train_cfg):
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train_cfg.lr, momentum=train_cfg.momentum,
                               weight_decay=train_cfg.weight_decay)
    cls = torch.optim.AdamW if train_cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)


def check_process_split(num_processes: int, batch_size: int, forget_set, remain_set) -> None:
    """A batch is no larger than the set it is drawn from, and every process holds an equal slice of it."""
    smaller = min(len(forget_set), len(remain_set))
    if batch_size > smaller:
        raise UserError(f"train.batch_size {batch_size} is larger than the forget / remain sets ({len(forget_set)} / "
                        f"{len(remain_set)} samples); valid: 1..{smaller}")
    if batch_size % num_processes or num_processes > smaller:
        raise UserError(f"{num_processes} processes cannot split train.batch_size {batch_size} and the forget / "
                        f"remain sets ({len(forget_set)} / {len(remain_set)} samples); valid: a process count "
                        "that divides the batch size and is at most the smaller set's size")


def masked_step(params, optimizer, mask=None, clip_fn=None, partially_frozen=None) -> None:
    """The update rule after backward: gradients masked by `mask` ({name: bool tensor}), clipped by `clip_fn`
    (called with the parameters), one optimizer step, then masked-out elements restored from a copy taken before
    it, so they do not move even when the optimizer carries momentum from earlier (unmasked) steps; gradients
    cleared. `partially_frozen`: names with a masked-out element (default: every masked name). The trainer and the
    GPU step benchmark both call it."""
    if mask is not None:
        for name, p in params:
            if p.grad is not None:
                p.grad.mul_(mask[name])
    if clip_fn is not None:
        clip_fn([p for _, p in params])
    partial = (mask.keys() if partially_frozen is None else partially_frozen) if mask is not None else ()
    frozen = {name: p.detach().clone() for name, p in params if name in partial}
    optimizer.step()
    if frozen:
        with torch.no_grad():
            for name, p in params:
                if name in frozen:
                    p.copy_(torch.where(mask[name], p, frozen[name]))
    optimizer.zero_grad(set_to_none=True)
