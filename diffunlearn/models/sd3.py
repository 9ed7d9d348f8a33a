"""Stable Diffusion 3 (concept forgetting with flow matching): an `SD3Transformer2DModel` (MMDiT) on `AutoencoderKL`
latents, conditioned on two frozen CLIP text encoders, wrapped around the stock `StableDiffusion3Pipeline`.

Flow matching in the family's terms. A timestep t is an integer in [0, T) as for the epsilon families (larger is
noisier); it stands for the training scheduler's noise level sigma_t (`FlowMatchEulerDiscreteScheduler`'s table,
its `shift` included) and the transformer sees sigma_t * T, as the pipeline passes it. x_t = (1 - sigma_t) x_0 +
sigma_t eps, the network predicts the velocity v = eps - x_0 (the training target), timesteps are drawn
logit-normal (diffusers' `compute_density_for_timestep_sampling`, the SD3 training default; antithetic pairs u,
1 - u) with unit loss weighting (`compute_loss_weighting_for_sd3` gives 1 for that scheme). Everything the methods
use (`training_losses`, `anchored_losses`, `predict`) keeps its meaning with "prediction" read as the velocity.

Conditions are prompt token ids (B, L) of `tokenizer`; `tokenizer_2` must share its vocabulary (true of SD3's two
CLIP tokenizers), its padding id is swapped in. The condition tensor packs what the transformer takes: (B, L + 1, D)
= both encoders' penultimate hidden states side by side, zero-padded to `joint_attention_dim` D, then one row holding
the pooled projections (zero-padded to D). The T5 encoder is not used (loaded as None): the stock pipeline then
appends `max_sequence_length` zero rows for it, and so does `predict`.
"""

from __future__ import annotations

from typing import Optional

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from ..errors import UserError
from ..registry import register_family
from .base import DiffusionModel
from .latent import LatentModelMixin
from .text import tokenize_prompts
from .text_families import TextFamilyMixin

CONTEXT_PROJECTIONS = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")  # the text tokens' projections
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0") + CONTEXT_PROJECTIONS
SAMPLERS = ("euler",)


@register_family
class StableDiffusion3(TextFamilyMixin, LatentModelMixin, DiffusionModel):
    """Wrapper of a stock `StableDiffusion3Pipeline` (without T5) for concept forgetting by flow matching."""

    family, conditioning, pipeline_class = "sd3", "text", StableDiffusion3Pipeline
    presets = {"embedded": "digits/sd3_sfron.yaml", "checkpoint": "sd/sd35_nudity_sfron.yaml"}
    load_hint = ("`from diffusers import StableDiffusion3Pipeline; StableDiffusion3Pipeline.from_pretrained(folder, "
                 "text_encoder_3=None, tokenizer_3=None)` (diffusers' way to load SD3 without T5; a LoRA run also "
                 "saves its adapter under `lora/`: `pipe.load_lora_weights(folder + '/lora')` on the base pipeline)")
    trainable_subsets = ("all", "cross_attention", "lora")
    # cross_attention: the text tokens' projections in each joint attention (their queries, keys, values and
    # output): all that reads the prompt and nothing that the image tokens' own self-attention uses, as ESD-x's
    # attn2 in the UNet (the image projections of `attn` are shared with it; training them costs every prompt)
    lora_targets, attention_modules = LORA_TARGETS, CONTEXT_PROJECTIONS
    default_sampler = "euler"
    max_sequence_length = 256  # the zero T5 rows the stock pipeline appends (its default max_sequence_length)

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.noise_scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)
        self.check_shared_vocabulary()

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "StableDiffusion3":
        """Load a diffusers SD3 folder or Hub id (safetensors only, no remote code; the T5 encoder is left out)."""
        kwargs = {"text_encoder_3": None, "tokenizer_3": None, **kwargs}
        return cls(StableDiffusion3Pipeline.from_pretrained(path, use_safetensors=True, **kwargs))

    @property
    def network(self) -> torch.nn.Module:
        return self.pipeline.transformer

    def text_encoders(self) -> list:
        return [self.pipeline.text_encoder, self.pipeline.text_encoder_2]

    # --- flow matching ------------------------------------------------------------------------------------------
    def sigmas(self, t: torch.Tensor) -> torch.Tensor:
        """Noise levels sigma_t (B,) of integer timesteps t (B,) (0 = least noisy) from the training table."""
        table = self.noise_scheduler.sigmas.to(self.device)
        return table.flip(0)[t.long()]

    def sample_timesteps(self, batch_size: int, generator, antithetic: bool = False) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        n = self.noise_scheduler.config.num_train_timesteps
        count = (batch_size + 1) // 2 if antithetic else batch_size
        u = compute_density_for_timestep_sampling("logit_normal", count, logit_mean=0.0, logit_std=1.0,
                                                  device=self.device, generator=generator)
        u = torch.cat([u, 1 - u])[:batch_size] if antithetic else u
        return (n - 1 - (u * n).long().clamp(max=n - 1))  # index i of the descending table is t = n - 1 - i

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = self.sigmas(t).to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        return (1 - sigma) * x0 + sigma * noise

    def training_target(self, x0, noise, t):
        return noise - x0

    def check_sampler(self, sampler: str) -> None:
        if sampler not in SAMPLERS:
            raise UserError(f"eval.sampler {sampler!r} is not supported by the sd3 family (flow matching); valid: "
                            f"{', '.join(SAMPLERS)}")

    # --- conditions ---------------------------------------------------------------------------------------------
    def tokenize(self, prompts) -> torch.Tensor:
        """Token ids (N, L) of `tokenizer`, padded to its max length L (refuses unknown words, over-long prompts)."""
        return tokenize_prompts(self.pipeline.tokenizer, prompts)

    def _encode(self, input_ids: torch.Tensor, token_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        dim = self.network.config.joint_attention_dim
        states, pooled = [], []
        for encoder, ids, embeds in zip(self.text_encoders(), (input_ids, self.second_ids(input_ids)),
                                        self.split_token_embeds(token_embeds)):
            out = self.run_encoder(encoder, ids, embeds, output_hidden_states=True)
            states.append(out.hidden_states[-2])  # the pipeline's default (clip_skip None)
            pooled.append(out[0])
        clip = torch.nn.functional.pad(torch.cat(states, -1), (0, dim - sum(s.shape[-1] for s in states)))
        row = torch.nn.functional.pad(torch.cat(pooled, -1), (0, dim - sum(p.shape[-1] for p in pooled)))
        return torch.cat([clip, row[:, None].to(clip.dtype)], 1)

    def unpack(self, cond: torch.Tensor) -> tuple:
        """(encoder_hidden_states (B, L + max_sequence_length, D), pooled_projections (B, P)) of a condition."""
        zeros = cond.new_zeros(cond.shape[0], self.max_sequence_length, cond.shape[-1])
        return torch.cat([cond[:, :-1], zeros], 1), cond[:, -1, :self.network.config.pooled_projection_dim]

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Velocity (B, C, h, w) for latents x_t (B, C, h, w), integer timesteps t (B,), conditions (B, L + 1, D)."""
        states, pooled = self.unpack(cond)
        timestep = self.sigmas(t) * self.noise_scheduler.config.num_train_timesteps
        return self.module(hidden_states=x_t, timestep=timestep.to(x_t.dtype), encoder_hidden_states=states,
                           pooled_projections=pooled).sample

    # --- sampling -----------------------------------------------------------------------------------------------
    def sample(self, input_ids, generator, num_inference_steps, guidance_scale, sampler="euler") -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] for prompt token ids (B, L), through the stock pipeline's `__call__`
        (flow-matching Euler steps; guidance as `StableDiffusionPipeline`'s: 0, 1 or > 1)."""
        self.check_sampler(sampler)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipeline.scheduler.config)
        pipe = self.stock_pipeline(transformer=self.network, scheduler=scheduler)
        return self.pooled_sample(pipe, input_ids, generator, num_inference_steps, guidance_scale)
