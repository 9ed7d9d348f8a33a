"""Images a model generates, seeded per image, and the on-disk cache of generated data sets."""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load_file, save_file

from ..outputs import atomic_write
from .digest import hash_tensor

SEED_STRIDE = 100_000


def image_seed(eval_seed: int, key: int, j: int) -> int:
    """The noise seed of image j of the target whose seed key is `key` (a class id, or a prompt's crc32 key)."""
    return eval_seed + key * SEED_STRIDE + j


def sample_seeds(eval_seed: int, label: int, count: int) -> list:
    return [image_seed(eval_seed, label, j) for j in range(count)]


@torch.inference_mode()
def generate(model, labels: torch.Tensor, seeds: list, eval_cfg) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1], on the CPU, one per (label, seed)."""
    out, device = [], model.device
    for start in range(0, len(labels), eval_cfg.batch_size):
        chunk = labels[start:start + eval_cfg.batch_size]
        gens = [torch.Generator(device).manual_seed(s) for s in seeds[start:start + eval_cfg.batch_size]]
        images = model.sample(chunk.to(device), generator=gens, num_inference_steps=eval_cfg.num_inference_steps,
                              guidance_scale=eval_cfg.guidance_scale, sampler=eval_cfg.sampler)
        out.append(images.float().cpu())
    return torch.cat(out) if out else torch.empty(0)  # empty: a process with no share (more processes than rows)


def labels_and_seeds(classes, per_class: int, eval_seed: int):
    labels = torch.tensor([c for c in classes for _ in range(per_class)], dtype=torch.long)
    seeds = [s for c in classes for s in sample_seeds(eval_seed, c, per_class)]
    return labels, seeds


def generation_key(model_key: str, conditions: torch.Tensor, seeds: list, sample_cfg: dict) -> str:
    """Digest of everything that determines a generated set: model weights, conditions, seeds, sampler."""
    digest = hashlib.sha256(model_key.encode())
    hash_tensor(digest, conditions)
    digest.update(json.dumps([seeds, sample_cfg], sort_keys=True).encode())
    return digest.hexdigest()[:32]


def generate_cached(model, conditions: torch.Tensor, seeds: list, eval_cfg, model_key: str) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] the model generates for `conditions` (N, ...) with per-image `seeds`.

    Made once and cached under `$DIFFUNLEARN_CACHE/generated/` (keyed on the weights, conditions, seeds and the
    sampler settings), so every run, process and resumed run trains on the same D_f / D_r.
    """
    from ..assets import cache_dir
    from .generated import generate

    sample_cfg = {"sampler": eval_cfg.sampler, "steps": eval_cfg.num_inference_steps,
                  "guidance": eval_cfg.guidance_scale}
    path = cache_dir() / "generated" / f"{generation_key(model_key, conditions, seeds, sample_cfg)}.safetensors"
    if path.is_file():
        return load_file(str(path))["images"]
    images = generate(model, conditions, seeds, eval_cfg)
    atomic_write(path, lambda tmp: save_file({"images": images.contiguous()}, str(tmp)))
    return images
