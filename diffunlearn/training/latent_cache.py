"""`train.cache_latents`: each image of D_f and D_r goes through the frozen VAE once, not at every step that draws it.

Latent families (DiT, SD, SDXL, SD3) train on VAE latents of their images. The encode is the posterior mean (see
`models/latent.py`), a function of the image alone, so a row's latents can be kept once made: the data set is
wrapped so that its rows carry "latents" beside "pixel_values", and `DiffusionModel.noised` uses them when present.
A row is encoded the first time a batch draws it (with the other new rows of that batch), so a run never encodes
more than it would without the cache, and each process encodes only the rows of its own share of the global
batches. The table is kept in host memory (one latent per image: 16 KiB at 256 px for SD-style VAEs) and a batch's
rows are moved to the device with the batch. The values differ from a per-step encode only by the batch's
floating-point reordering (measured in `tests/test_cache_latents.py`). Pixel-space families (DDPM) have nothing to
cache: their sets are left as they are.
"""

from __future__ import annotations

import torch

from ..models.latent import LatentModelMixin

LATENTS = "latents"


def without_latents(batch: dict) -> dict:
    """`batch` without cached latents: for a batch whose pixels a method replaces (e.g. SA's noise images)."""
    return {key: value for key, value in batch.items() if key != LATENTS}


class CachedLatents(torch.utils.data.Dataset):
    """A training data set (indexed by a row or a tensor of rows, as `StepSampler` reads it) whose rows also carry
    the VAE latents of their "pixel_values" (`model.encode`), each encoded the first time it is read."""

    def __init__(self, data_set, model):
        self.data_set, self.model = data_set, model
        self.latents = None  # (N, c, h, w) on the host, allocated at the first encode
        self.encoded = torch.zeros(len(data_set), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.data_set)

    def __getitem__(self, index):
        item = self.data_set[index]
        rows = torch.as_tensor(index, dtype=torch.long).cpu()
        new = rows.reshape(-1)[~self.encoded[rows.reshape(-1)]].unique()
        if len(new):
            with torch.no_grad():
                latents = self.model.encode(self.data_set[new]["pixel_values"].to(self.model.device)).cpu()
            if self.latents is None:
                self.latents = latents.new_empty((len(self.data_set), *latents.shape[1:]))
            self.latents[new] = latents
            self.encoded[new] = True
        return {**item, LATENTS: self.latents[rows]}


def cached_sets(model, *data_sets, enabled: bool = True) -> tuple:
    """`data_sets` wrapped in `CachedLatents` when `enabled` and `model` is a latent family, else unchanged."""
    if not (enabled and isinstance(model, LatentModelMixin)):
        return data_sets
    return tuple(CachedLatents(data_set, model) for data_set in data_sets)
