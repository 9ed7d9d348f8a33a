"""Latent-space families (DiT, Stable Diffusion): images go through the pipeline's frozen `AutoencoderKL`.

Training encodes with the posterior mean (deterministic, so a resumed or multi-process run sees the same latents),
shifted by `vae.config.shift_factor` (SD3's VAEs; none elsewhere) and scaled by `vae.config.scaling_factor`; sampling
decodes with the inverse, as diffusers' pipelines do.
"""

from __future__ import annotations

import torch


def tiny_vae_config(in_channels: int = 1, latent_channels: int = 4, channels=(32, 64), norm_num_groups: int = 8,
                    sample_size: int = 8) -> dict:
    """Config of a small `AutoencoderKL`: one 2x downsampling per extra block (8x8 digits -> 4x4 latents)."""
    return dict(in_channels=in_channels, out_channels=in_channels, latent_channels=latent_channels,
                block_out_channels=tuple(channels), down_block_types=("DownEncoderBlock2D",) * len(channels),
                up_block_types=("UpDecoderBlock2D",) * len(channels), layers_per_block=1,
                norm_num_groups=norm_num_groups, sample_size=sample_size)


@torch.no_grad()
def encode_latents(vae, pixel_values: torch.Tensor) -> torch.Tensor:
    """Scaled latents (B, c, h, w) of images (B, C, H, W) in [-1, 1] (posterior mean, no gradient)."""
    posterior = vae.encode(pixel_values.to(vae.device, vae.dtype)).latent_dist
    return (posterior.mean - (getattr(vae.config, "shift_factor", None) or 0.0)) * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [0, 1] from scaled latents."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift).sample
    return (images.float() / 2 + 0.5).clamp(0, 1)


class LatentModelMixin:
    """Mix into a `DiffusionModel` whose pipeline has a `vae`: the network works on scaled VAE latents."""

    @property
    def vae(self):
        return self.pipeline.vae

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return encode_latents(self.vae, pixel_values)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.vae, latents)
