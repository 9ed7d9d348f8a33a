"""Prompt-conditioned image sets (concept forgetting) and base-model generated data sets, cached on disk."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Optional

import torch
from safetensors.torch import load_file, save_file


@dataclass
class PromptImages(torch.utils.data.Dataset):
    """Images in [0, 1] with the token ids of their prompt (and, for D_f, of the anchor prompt).

    Attributes:
        images: (N, C, H, W) float32 in [0, 1].
        input_ids: (N, L) int64, the prompt each image was made for.
        anchor_ids: (N, L) int64, the anchor prompt of each image (D_f), or None (D_r).
    """

    images: torch.Tensor
    input_ids: torch.Tensor
    anchor_ids: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        item = {"pixel_values": self.images[index] * 2 - 1, "input_ids": self.input_ids[index]}
        if self.anchor_ids is not None:
            item["anchor_ids"] = self.anchor_ids[index]
        return item


def generation_key(model_key: str, conditions: torch.Tensor, seeds: list, sample_cfg: dict) -> str:
    """Digest of everything that determines a generated set: model weights, conditions, seeds, sampler."""
    digest = hashlib.sha256(model_key.encode())
    digest.update(conditions.cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps([seeds, sample_cfg], sort_keys=True).encode())
    return digest.hexdigest()[:32]


def generate_cached(model, conditions: torch.Tensor, seeds: list, eval_cfg, model_key: str) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] the model generates for `conditions` (N, ...) with per-image `seeds`.

    Made once and cached under `$DIFFUNLEARN_CACHE/generated/` (keyed on the weights, conditions, seeds and the
    sampler settings), so every run, process and resumed run trains on the same D_f / D_r.
    """
    from ..evaluation.metrics import generate
    from ..saliency import cache_dir

    sample_cfg = {"sampler": eval_cfg.sampler, "steps": eval_cfg.num_inference_steps,
                  "guidance": eval_cfg.guidance_scale}
    path = cache_dir() / "generated" / f"{generation_key(model_key, conditions, seeds, sample_cfg)}.safetensors"
    if path.is_file():
        return load_file(str(path))["images"]
    images = generate(model, conditions, seeds, eval_cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{torch.randint(1 << 30, ()).item()}.tmp")
    save_file({"images": images.contiguous()}, str(tmp))
    tmp.replace(path)
    return images
