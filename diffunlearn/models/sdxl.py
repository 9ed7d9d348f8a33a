"""Stable Diffusion XL (concept forgetting): a `UNet2DConditionModel` with text-time added conditioning on
`AutoencoderKL` latents, conditioned on two frozen CLIP text encoders, wrapped around the stock
`StableDiffusionXLPipeline`.

Conditions are prompt token ids (B, L) of `tokenizer` (`tokenizer_2` shares the vocabulary; its padding id is
swapped in). The condition tensor packs what the UNet takes: (B, L + 1, D) = both encoders' penultimate hidden
states side by side (D = their sum, the UNet's `cross_attention_dim`), then one row holding `text_encoder_2`'s
pooled projection (zero-padded to D). The micro-conditioning time ids are the pipeline's defaults for the model's
image size (original = target = that size, crop (0, 0)), added in `predict`. The null condition is what the stock
pipeline guides with when no negative prompt is given: zeros when `force_zeros_for_empty_prompt` (SDXL base's
setting), else the empty prompt's encoding. Training is the UNet families' epsilon (or v) loss.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionXLPipeline

from ..registry import register_family
from .base import DiffusionModel, sampling_scheduler
from .latent import LatentModelMixin
from .sd import LORA_TARGETS
from .text import tokenize_prompts
from .text_families import TextFamilyMixin


@register_family
class StableDiffusionXL(TextFamilyMixin, LatentModelMixin, DiffusionModel):
    """Wrapper of a stock `StableDiffusionXLPipeline` for concept forgetting (prompt -> anchor prompt)."""

    family, conditioning, pipeline_class = "sdxl", "text", StableDiffusionXLPipeline
    presets = {"embedded": "digits/sdxl_sfron.yaml", "checkpoint": "sd/sdxl_nudity_sfron.yaml"}
    load_hint = ("`from diffusers import StableDiffusionXLPipeline; StableDiffusionXLPipeline.from_pretrained(folder)`"
                 " (a LoRA run also saves its adapter under `lora/`: `pipe.load_lora_weights(folder + '/lora')` on "
                 "the base pipeline)")
    trainable_subsets = ("all", "cross_attention", "lora")
    lora_targets, attention_modules, lora_layers_key = LORA_TARGETS, ("attn2",), "unet"

    def __init__(self, pipeline):
        super().__init__(pipeline)
        self.check_shared_vocabulary()

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "StableDiffusionXL":
        """Load a diffusers SDXL folder or Hub id (safetensors only, no remote code, no watermarker)."""
        return cls(StableDiffusionXLPipeline.from_pretrained(path, use_safetensors=True, add_watermarker=False,
                                                             **kwargs))

    @property
    def network(self) -> torch.nn.Module:
        return self.pipeline.unet

    def pipeline_options(self) -> dict:
        return {"force_zeros_for_empty_prompt": self.pipeline.config.force_zeros_for_empty_prompt,
                "add_watermarker": False}

    def text_encoders(self) -> list:
        return [self.pipeline.text_encoder, self.pipeline.text_encoder_2]

    # --- conditions ---------------------------------------------------------------------------------------------
    def tokenize(self, prompts) -> torch.Tensor:
        """Token ids (N, L) of `tokenizer`, padded to its max length L (refuses unknown words, over-long prompts)."""
        return tokenize_prompts(self.pipeline.tokenizer, prompts)

    def _encode(self, input_ids: torch.Tensor, token_embeds=None) -> torch.Tensor:
        states, pooled = [], None
        for encoder, ids, embeds in zip(self.text_encoders(), (input_ids, self.second_ids(input_ids)),
                                        self.split_token_embeds(token_embeds)):
            out = self.run_encoder(encoder, ids, embeds, output_hidden_states=True)
            states.append(out.hidden_states[-2])  # the pipeline's default (clip_skip None)
            pooled = out[0]  # the last encoder's projection (text_embeds), as the pipeline keeps
        cat = torch.cat(states, -1)
        row = torch.nn.functional.pad(pooled, (0, cat.shape[-1] - pooled.shape[-1]))
        return torch.cat([cat, row[:, None].to(cat.dtype)], 1)

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        if self.pipeline.config.force_zeros_for_empty_prompt:
            return torch.zeros_like(cond)
        return super().null_condition(cond)

    def unpack(self, cond: torch.Tensor) -> tuple:
        """(encoder_hidden_states (B, L, D), text_embeds (B, P)) of a condition."""
        return cond[:, :-1], cond[:, -1, :self.pipeline.text_encoder_2.config.projection_dim]

    def time_ids(self, batch: int, device, dtype) -> torch.Tensor:
        """The pipeline's default micro-conditioning (original size, crop (0, 0), target size), (B, 6)."""
        size = self.image_shape()[-1]
        return torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=dtype).expand(batch, 6)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """UNet output (B, C, h, w) for latents x_t, timesteps t (B,), conditions (B, L + 1, D)."""
        states, pooled = self.unpack(cond)
        added = {"text_embeds": pooled, "time_ids": self.time_ids(x_t.shape[0], x_t.device, pooled.dtype)}
        return self.module(x_t, t, encoder_hidden_states=states, added_cond_kwargs=added).sample

    # --- sampling -----------------------------------------------------------------------------------------------
    def sample(self, input_ids, generator, num_inference_steps, guidance_scale, sampler="ddim") -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] for prompt token ids (B, L), through the stock pipeline's `__call__`
        (guidance as `StableDiffusionPipeline`'s: 0, 1 or > 1)."""
        pipe = self.stock_pipeline(unet=self.network,
                                   scheduler=sampling_scheduler(self.pipeline.scheduler.config, sampler))
        return self.pooled_sample(pipe, input_ids, generator, num_inference_steps, guidance_scale)
