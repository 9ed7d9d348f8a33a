"""Stable Diffusion (concept forgetting): a `UNet2DConditionModel` on `AutoencoderKL` latents, conditioned on the
hidden states of a frozen CLIP text encoder, wrapped around the stock `StableDiffusionPipeline`.

Conditions are prompt token ids (B, L) from `tokenize`; the wrapper turns them into text-encoder hidden states
(B, L, D). The null condition is the empty prompt "", as in the pipeline's classifier-free guidance. Unlearning
changes only UNet weights: all of them, the cross-attention (`attn2`) modules as ESD-x does, or LoRA adapters
(peft) on the attention projections. Text encoder and VAE are never trained.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from ..registry import register_family
from .base import DiffusionModel, sampling_scheduler
from .latent import LatentModelMixin
from .text import tokenize_prompts
from .text_families import TextFamilyMixin

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections of every attn1 / attn2


@register_family
class StableDiffusion(TextFamilyMixin, LatentModelMixin, DiffusionModel):
    """Wrapper of a stock `StableDiffusionPipeline` for concept forgetting (prompt -> anchor prompt)."""

    family, conditioning, pipeline_class = "sd", "text", StableDiffusionPipeline
    presets = {"embedded": "digits/sd_sfron.yaml", "checkpoint": "sd/sd14_nudity_sfron.yaml"}
    load_hint = ("`from diffusers import StableDiffusionPipeline; StableDiffusionPipeline.from_pretrained(folder)` "
                 "(a LoRA run also saves its adapter under `lora/`: `pipe.load_lora_weights(folder + '/lora')` on "
                 "the base pipeline)")
    trainable_subsets = ("all", "cross_attention", "lora")
    lora_targets, attention_modules, lora_layers_key = LORA_TARGETS, ("attn2",), "unet"

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "StableDiffusion":
        """Load a diffusers SD folder or Hub id (safetensors only; no safety checker, no remote code)."""
        pipe = StableDiffusionPipeline.from_pretrained(path, use_safetensors=True, safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False,
                                                       **kwargs)
        return cls(pipe)

    @property
    def network(self) -> torch.nn.Module:
        return self.pipeline.unet

    def text_encoders(self) -> list:
        return [self.pipeline.text_encoder]

    # --- conditions ---------------------------------------------------------------------------------------------
    def tokenize(self, prompts) -> torch.Tensor:
        """Token ids (N, L) of prompts, padded to the tokenizer's max length L.

        Raises:
            UserError: a prompt with words the tokenizer cannot encode, or longer than L tokens.
        """
        return tokenize_prompts(self.pipeline.tokenizer, prompts)

    def _encode(self, input_ids: torch.Tensor, token_embeds=None) -> torch.Tensor:
        """Prompt embeddings (B, L, D): the text encoder's last hidden state, as `StableDiffusionPipeline.
        encode_prompt` makes it (no attention mask, no clip skip)."""
        return self.run_encoder(self.pipeline.text_encoder, input_ids, token_embeds)[0]

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """UNet output (B, C, h, w) for latents x_t (B, C, h, w), timesteps t (B,), prompt embeddings (B, L, D)."""
        module = self.module
        return module(x_t, t, encoder_hidden_states=cond).sample

    # --- sampling -----------------------------------------------------------------------------------------------
    def sample(self, input_ids, generator, num_inference_steps, guidance_scale, sampler="ddim") -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] for prompt token ids (B, L), through the stock pipeline's `__call__`.

        Guidance is `uncond + s * (cond - uncond)` with the empty prompt as uncond. The stock pipeline guides only
        for s > 1 and samples the prompt alone for s <= 1, so s = 0 (unconditional) passes the empty prompt as the
        prompt and 0 < s < 1 is refused. With one generator per image, image i depends only on generator i.
        """
        self.check_guidance(guidance_scale)
        cond = self.encode_prompt_ids(input_ids)
        uncond = self.null_condition(cond)
        pipe = self.stock_pipeline(unet=self.network,
                                   scheduler=sampling_scheduler(self.pipeline.scheduler.config, sampler))
        pipe.set_progress_bar_config(disable=True)
        return pipe(prompt_embeds=uncond if guidance_scale == 0 else cond, negative_prompt_embeds=uncond,
                    guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, generator=generator,
                    output_type="pt").images


def tiny_sd_unet_config(sample_size: int = 4, in_channels: int = 4, channels=(32, 64), layers_per_block: int = 1,
                        cross_attention_dim: int = 64, heads: int = 4, norm_num_groups: int = 8) -> dict:
    """Config of a small `UNet2DConditionModel` with cross-attention in every block (one 2x downsampling per extra
    block: 4x4 latents -> 2x2 at the defaults). `cross_attention_dim` is the text encoder's hidden size."""
    down = ("CrossAttnDownBlock2D",) * len(channels)
    return dict(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                block_out_channels=tuple(channels), layers_per_block=layers_per_block, down_block_types=down,
                up_block_types=("CrossAttnUpBlock2D",) * len(channels), cross_attention_dim=cross_attention_dim,
                attention_head_dim=heads, norm_num_groups=norm_num_groups)  # diffusers reads it as the head count
