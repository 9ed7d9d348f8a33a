"""The training loop the recipes share (the DDPM, DiT, VAE, text-to-image and classifier base models, and RT).

Each step: `loss_fn(step)` gives the loss (its own seeded draws inside), `accelerator.backward`, the one update rule
(`masked_step`, with no mask here), the learning-rate schedule, the EMA. The unlearning `Trainer` has a loop of its
own on purpose: there an iteration is a method's sequence of masked updates on two streams (D_f, D_r), with
checkpoints, resume and in-loop checks, none of which a from-scratch recipe has; what both share is `masked_step`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from .step import masked_step


def warmup_schedule(optimizer, warmup_steps: int, cosine_steps: int = 0):
    """Linear warmup (factor (step + 1) / warmup_steps), then constant (cosine_steps=0) or cosine decay to 0 at
    step `cosine_steps`.

    Not diffusers' `get_*_schedule_with_warmup`: their warmup factor is step / warmup_steps (lr 0 at step 0), which
    would change every shipped model's recipe run."""

    def factor(step):
        if step < warmup_steps or not cosine_steps:
            return min(1.0, (step + 1) / warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / max(1, cosine_steps - warmup_steps))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit(accelerator, optimizer, lr_schedule, steps: int, loss_fn: Callable, desc: str, progress: bool = True,
        ema=None, ema_params=None, shown: Optional[str] = "loss") -> None:
    """Run `steps` optimizer steps of `loss_fn(step) -> (loss, value to show)` on prepared `optimizer` /
    `lr_schedule`; `ema` (diffusers `EMAModel`) steps on `ema_params` after each update. Every 100 steps the bar
    shows the value as `shown`."""
    params = [(str(i), p) for i, group in enumerate(optimizer.param_groups) for p in group["params"]]
    bar = tqdm(range(steps), disable=not (progress and accelerator.is_main_process), desc=desc)
    for step in bar:
        loss, value = loss_fn(step)
        accelerator.backward(loss)
        masked_step(params, optimizer)
        lr_schedule.step()
        if ema is not None:
            ema.step(ema_params)
        if shown and step % 100 == 0:
            bar.set_postfix({shown: f"{value.item():.4f}"})
