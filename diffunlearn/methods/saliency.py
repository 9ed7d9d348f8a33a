"""Weight-saliency masks: which parameter elements a forget step may change.

SFR-on's mask compares the diagonal Fisher information of the forget set with that of the remain set,
S = (F_f + eps) / (F_r + eps) >= gamma, computed once on the original weights and cached on disk (`mask_key`: a
function of the weights, the batches used, the training scheduler and the settings; at most
DIFFUNLEARN_CACHE_BYTES_MASKS bytes, default 4 GiB, least recently used masks go first).

Under FSDP2 a mask tensor is laid out like its parameter (a DTensor sharded the same way), so `grad *= mask` and the
element-wise Fisher ratio run on each process's shard; counts and SalUn's global threshold are reduced across shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list
from safetensors.torch import load_file, save_file

from ..disk_cache import GiB, DiskCache, cache_key, scheduler_config, touch
from ..distributed import count_true, full_tensor, kth_largest, local_tensor, shard_like
from ..training.streams import Stream

KEY_VERSION = 2  # 2: whole SHA-256, with antithetic sampling, the training scheduler and the tensors' names
CACHE = DiskCache("masks", "DIFFUNLEARN_CACHE_BYTES_MASKS", 4 * GiB)  # a mask is one byte per parameter (SD's UNet:
# 0.86 GB)


@dataclass
class SaliencyMask:
    """Boolean mask per parameter, True where a forget step may change the element (each tensor laid out like its
    parameter: a shard of it under FSDP)."""

    tensors: dict

    @cached_property
    def partially_frozen(self) -> frozenset:
        """Names of parameters with at least one masked-out element (in this process's shard under FSDP)."""
        return frozenset(name for name, m in self.tensors.items() if not bool(local_tensor(m).all()))

    def density(self) -> float:
        kept, total = count_true(self.tensors.values())
        return kept / max(1, total)

    def save(self, path, main_process: bool = True) -> None:
        """Write the full mask; under FSDP every process must call it (the shards are gathered), one writes."""
        tensors = {k: full_tensor(v).to(torch.uint8).cpu().contiguous() for k, v in self.tensors.items()}
        if main_process:
            save_file(tensors, str(path))

    @classmethod
    def load(cls, path, params) -> "SaliencyMask":
        """Read a full mask and lay each tensor out like its parameter in the (name, parameter) pairs `params`."""
        like = dict(params)
        return cls({k: shard_like(v.bool().to(like[k].device), like[k]) for k, v in load_file(str(path)).items()})


def mean_squared_gradient(context, losses, clip=None) -> dict:
    """Mean over `losses` (scalar losses, best made lazily: each is backpropagated before the next is computed) of
    the squared (clipped) gradient of each, per parameter element."""
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in context.params}
    count = 0
    for loss in losses:
        context.backward(loss)
        if clip:
            context.clip_grad_norm_([p for _, p in context.params], clip)
        for name, p in context.params:
            if p.grad is not None:
                fisher[name] += p.grad.float().pow(2)
        context.zero_grad()
        count += 1
    return {name: f / count for name, f in fisher.items()}


def fisher_diagonal(context, batches: list, stream: int, guidance_scale, clip) -> dict:
    """Mean over batches of the squared (clipped) gradient of the batch-mean loss, per parameter element."""
    return mean_squared_gradient(context, (
        context.model.training_losses(batch, generator=context.generator(i, stream), shard=context.shard,
                                      guidance_scale=guidance_scale, antithetic=context.train_cfg.antithetic).mean()
        for i, batch in enumerate(batches)), clip)


def mask_key(context, batches: list, gamma: float, guidance_scale, clip, eps: float) -> str:
    """SHA-256 (64 hex digits) of what SFR-on's mask is a function of: the settings, the run's seed and process
    count (the batches' noise draws), antithetic timestep sampling, the training scheduler's class and config, and
    the trainable parameters' and the Fisher batches' tensors (names, dtypes, shapes, bytes). Under FSDP every
    process must call it (the parameters are gathered)."""
    scheduler = getattr(context.model, "noise_scheduler", None)
    header = {"version": KEY_VERSION, "seed": context.cfg.seed, "gamma": gamma, "guidance_scale": guidance_scale,
              "clip": clip, "eps": eps, "num_processes": context.num_processes,
              "antithetic": context.train_cfg.antithetic, "scheduler": scheduler_config(scheduler)}
    tensors = [(name, p) for name, p in context.params]
    tensors += [(f"batch{i}.{k}", v) for i, batch in enumerate(batches) for k, v in batch.items()
                if isinstance(v, torch.Tensor)]
    return cache_key(header, tensors)


def fisher_saliency_mask(context, num_batches: int, gamma: float, guidance_scale, clip, eps: float = 1e-15,
                         use_cache: bool = True):
    """SFR-on's saliency mask on the trainer's current (original) weights.

    Returns:
        (SaliencyMask, info) where info records the cache file, whether it was a hit, and the mask density.
    """
    forget = [context.forget_batch(i) for i in range(num_batches)]
    remain = [context.remain_batch(i) for i in range(num_batches)]
    key = mask_key(context, forget + remain, gamma, guidance_scale, clip, eps)
    path = CACHE.path(key)
    decision = [str(path), use_cache and path.is_file()]
    broadcast_object_list(decision)  # every process must take the same branch (the Fisher pass is collective)
    path, hit = Path(decision[0]), decision[1]
    if hit:
        touch(path)
        mask = SaliencyMask.load(path, context.params)
    else:
        f_forget = fisher_diagonal(context, forget, stream=Stream.MASK_FORGET, guidance_scale=guidance_scale, clip=clip)
        f_remain = fisher_diagonal(context, remain, stream=Stream.MASK_REMAIN, guidance_scale=guidance_scale, clip=clip)
        mask = SaliencyMask({name: (f_forget[name] + eps) / (f_remain[name] + eps) >= gamma for name in f_forget})
        if use_cache:
            main = context.is_main_process
            CACHE.store(key, lambda tmp: mask.save(tmp, main_process=main), commit=main)
    return mask, {"mask_cache": str(path), "mask_cache_hit": hit, "mask_density": mask.density()}


def gradient_saliency_mask(context, num_batches: int, keep_fraction: float) -> SaliencyMask:
    """SalUn's mask: the `keep_fraction` of elements with the largest |gradient of the mean forget loss|,
    accumulated over `num_batches` forget batches on the current (original) weights, one global threshold (over
    all shards under FSDP)."""
    for i in range(num_batches):
        losses = context.model.training_losses(context.forget_batch(i), generator=context.generator(i, Stream.SALUN_MASK),
                                               shard=context.shard)
        context.backward(losses.mean() / num_batches)
    grads = {name: p.grad.detach().abs() if p.grad is not None else torch.zeros_like(p) for name, p in context.params}
    context.zero_grad()
    k = max(1, int(round(keep_fraction * sum(g.numel() for g in grads.values()))))  # numel: the full shape's
    threshold = kth_largest(grads.values(), k)
    return SaliencyMask({name: g >= threshold for name, g in grads.items()})
