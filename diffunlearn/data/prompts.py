"""Prompt-conditioned image sets (concept forgetting) and base-model generated data sets, cached on disk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


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


