"""Timing one SFR-on iteration and one plain fine-tuning step, with the operations of `Trainer.update`.

SFR-on iteration = a forget step then a remain step on one optimizer; each step: backward, then the trainer's own
update rule (`trainer.masked_step`: gradient masked by the saliency mask on the forget step, clipped to norm 1,
optimizer step, masked-out elements restored from a copy taken before the step, gradients cleared). Fine-tuning step = one remain step (no mask) at the same batch.
Optimizers as the real configs: AdamW for DiT, Adam for the text-to-image families.
"""

from __future__ import annotations

import gc
import statistics
import time
from contextlib import nullcontext

import torch

from ...training.step import masked_step
from .cases import set_subset

KINDS = ("sfr_on", "ft")
LR = {"dit": 1e-4}


def random_mask(params, density: float = 0.5, seed: int = 0) -> dict:
    """{name: bool tensor}: a saliency-mask stand-in keeping `density` of each parameter's elements."""
    gen = torch.Generator(params[0][1].device).manual_seed(seed)
    return {n: torch.rand(p.shape, generator=gen, device=p.device) < density for n, p in params}


def masked_update(loss, params, optimizer, clip: float = 1.0, mask=None) -> None:
    """`Trainer.update` without accelerate: backward, then the trainer's own `masked_step`."""
    loss.backward()
    masked_step(params, optimizer, mask, lambda ps: torch.nn.utils.clip_grad_norm_(ps, clip))


def autocast(device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def iteration(case, batch, params, optimizer, mask, precision: str, kind: str) -> torch.Tensor:
    """One SFR-on iteration (kind sfr_on) or one plain fine-tuning step (kind ft); returns the remain loss."""
    if kind == "sfr_on":
        with autocast(case.device, precision):
            loss_f = case.forget_loss(batch)
        masked_update(loss_f, params, optimizer, mask=mask)
    with autocast(case.device, precision):
        loss_r = case.task_loss(batch)
    masked_update(loss_r, params, optimizer)
    return loss_r.detach()


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def encode_seconds(case, batch, precision: str) -> float:
    """Seconds of one frozen-VAE encode of the step's pixel batch (each training step runs one)."""
    with autocast(case.device, precision):
        case.latents(batch["pixels"])
        synchronize(case.device)
        start = time.perf_counter()
        case.latents(batch["pixels"])
        synchronize(case.device)
    return time.perf_counter() - start


def make_optimizer(case, params):
    cls = torch.optim.AdamW if case.spec.key == "dit" else torch.optim.Adam
    return cls([p for _, p in params], lr=LR.get(case.spec.key, 1e-5))


def measure(case, precision: str, checkpointing: bool, kind: str, batch_size: int, subset: str = "all",
            warmup: int = 1, iters: int = 3, budget_s: float = 20.0, compiled: bool = False,
            cached_latents: bool = False) -> dict:
    """ms per step (median of the timed ones; fewer than `iters` once `budget_s` is spent, at least one) and peak
    allocated GPU memory over warm-up and timed steps; "OOM" when it does not fit. `cached_latents`: the batch's
    latents are encoded once before the steps (`train.cache_latents` once every image was drawn), so a step runs no
    VAE encode."""
    device = case.device
    if checkpointing:
        case.network.enable_gradient_checkpointing()
    else:
        case.network.disable_gradient_checkpointing()
    row = {"model": case.spec.name, "kind": kind, "subset": subset, "batch": batch_size, "precision": precision,
           "grad_ckpt": checkpointing, "compiled": compiled, "cached_latents": cached_latents}
    params = set_subset(case.spec, case.network, subset)
    row["trainable_M"] = round(sum(p.numel() for _, p in params) / 1e6, 2)
    optimizer, mask, batch = None, None, None
    release(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        optimizer = make_optimizer(case, params)
        mask = random_mask(params) if kind == "sfr_on" else None
        batch = case.batch(batch_size)
        if cached_latents:
            with autocast(device, precision):
                batch["latents"] = case.latents(batch["pixels"])
        times, losses, start_all = [], [], time.perf_counter()
        for i in range(warmup + iters):
            synchronize(device)
            start = time.perf_counter()
            losses.append(float(iteration(case, batch, params, optimizer, mask, precision, kind)))
            synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
                if time.perf_counter() - start_all > budget_s:
                    break
        row.update(ms=round(1000 * statistics.median(times), 1), timed_steps=len(times), first_loss=losses[0])
        if not cached_latents:
            row["vae_encode_ms"] = round(1000 * encode_seconds(case, batch, precision), 1)  # per step, in the above
        row["peak_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if device.type == "cuda" else None
    except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
        if not is_oom(exc):
            raise
        row.update(ms=None, peak_GiB="OOM")
    finally:
        del optimizer, mask, batch
        for _, p in case.network.named_parameters():
            p.grad = None
        release(device)
    return row
