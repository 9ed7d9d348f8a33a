"""Stable Diffusion (concept forgetting): a `UNet2DConditionModel` on `AutoencoderKL` latents, conditioned on the
hidden states of a frozen CLIP text encoder, wrapped around the stock `StableDiffusionPipeline`.

Conditions are prompt token ids (B, L) from `tokenize`; the wrapper turns them into text-encoder hidden states
(B, L, D). The null condition is the empty prompt "", as in the pipeline's classifier-free guidance. Unlearning
changes only UNet weights: all of them, the cross-attention (`attn2`) modules as ESD-x does, or LoRA adapters
(peft) on the attention projections. Text encoder and VAE are never trained.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from ..errors import UserError
from ..registry import register_family
from .base import DiffusionModel, sampling_scheduler
from .latent import LatentModelMixin
from .text import encode_prompts, encode_token_embeddings, tokenize_prompts

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections of every attn1 / attn2


@register_family
class StableDiffusion(LatentModelMixin, DiffusionModel):
    """Wrapper of a stock `StableDiffusionPipeline` for concept forgetting (prompt -> anchor prompt)."""

    family, conditioning, pipeline_class = "sd", "text", StableDiffusionPipeline
    presets = {"embedded": "digits/sd_sfron.yaml", "checkpoint": "sd/sd14_nudity_sfron.yaml"}
    load_hint = ("`from diffusers import StableDiffusionPipeline; StableDiffusionPipeline.from_pretrained(folder)` "
                 "(a LoRA run also saves its adapter under `lora/`: `pipe.load_lora_weights(folder + '/lora')` on "
                 "the base pipeline)")
    trainable_subsets = ("all", "cross_attention", "lora")

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "StableDiffusion":
        """Load a diffusers SD folder or Hub id (safetensors only; no safety checker, no remote code)."""
        pipe = StableDiffusionPipeline.from_pretrained(path, use_safetensors=True, safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False,
                                                       **kwargs)
        return cls(pipe)

    # --- weights ------------------------------------------------------------------------------------------------
    @property
    def network(self) -> torch.nn.Module:
        return self.pipeline.unet

    @property
    def has_lora(self) -> bool:
        return bool(getattr(self.network, "peft_config", None))

    def set_trainable(self, subset: str = "all", lora_rank: int = 4) -> None:
        """Choose the UNet weights unlearning may change.

        Args:
            subset: "all" (every UNet weight), "cross_attention" (the `attn2` modules: text-conditioned attention,
                as ESD-x) or "lora" (new LoRA adapters of rank `lora_rank` on the attention projections; the base
                weights stay frozen and LoRA's zero-initialised up-projection leaves the outputs unchanged).
            lora_rank: rank of the LoRA adapters (alpha = rank, so their scale is 1).
        """
        super().set_trainable(subset, lora_rank)
        unet = self.network
        self.pipeline.text_encoder.requires_grad_(False)
        self.pipeline.vae.requires_grad_(False)
        if self.has_lora and subset != "lora":
            raise UserError(f"model.subset={subset!r} on a UNet that already holds LoRA adapters; use subset=lora")
        unet.requires_grad_(subset == "all")
        if subset == "cross_attention":
            for name, module in unet.named_modules():
                if name.endswith("attn2"):
                    module.requires_grad_(True)
        elif subset == "lora":
            self._add_lora(lora_rank)

    def _add_lora(self, rank: int) -> None:
        try:
            from peft import LoraConfig
        except ImportError:
            raise UserError("model.subset=lora needs peft: pip install 'diffunlearn[lora]'") from None
        if not self.has_lora:
            self.network.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True,
                                                target_modules=list(LORA_TARGETS)))
        for name, p in self.network.named_parameters():
            p.requires_grad_(".lora_" in name)

    def save_pretrained(self, path) -> None:
        """Save a stock `StableDiffusionPipeline` folder (LoRA fused into a copy of the UNet) and, for a LoRA model,
        also its adapter in diffusers' format under `path/lora` (for `load_lora_weights` on the base pipeline)."""
        if not self.has_lora:
            self.pipeline.save_pretrained(path, safe_serialization=True)
            return
        from peft.utils import get_peft_model_state_dict

        fused = copy.deepcopy(self.network)
        fused.fuse_lora()
        fused.unload_lora()
        StableDiffusionPipeline(**{**self.pipeline.components, "unet": fused},
                                requires_safety_checker=False).save_pretrained(path, safe_serialization=True)
        StableDiffusionPipeline.save_lora_weights(
            Path(path) / "lora", unet_lora_layers=get_peft_model_state_dict(self.network),
            unet_lora_adapter_metadata=self.network.peft_config["default"].to_dict(), safe_serialization=True)

    # --- conditions ---------------------------------------------------------------------------------------------
    def tokenize(self, prompts) -> torch.Tensor:
        """Token ids (N, L) of prompts, padded to the tokenizer's max length L.

        Raises:
            UserError: a prompt with words the tokenizer cannot encode, or longer than L tokens.
        """
        return tokenize_prompts(self.pipeline.tokenizer, prompts)

    def encode_prompt_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Frozen text-encoder hidden states (B, L, D) of token ids (B, L)."""
        return encode_prompts(self.pipeline.text_encoder, input_ids)

    def token_embedding_table(self) -> torch.Tensor:
        """The text encoder's token embeddings (V, E), one row per vocabulary id (frozen)."""
        return self.pipeline.text_encoder.get_input_embeddings().weight.detach()

    def special_token_ids(self) -> set:
        """Ids of the tokenizer's start, end and padding tokens (prompt searches leave them out)."""
        tok = self.pipeline.tokenizer
        return {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}

    def encode_token_embeddings(self, input_ids: torch.Tensor, token_embeds: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings (B, L, D) of token ids (B, L) whose token embeddings are `token_embeds` (B, L, E)
        (differentiable: relaxed tokens for prompt attacks)."""
        return encode_token_embeddings(self.pipeline.text_encoder, input_ids, token_embeds)

    def condition(self, batch: dict) -> torch.Tensor:
        """Prompt embeddings (B, L, D) of batch["input_ids"] (B, L)."""
        return self.encode_prompt_ids(batch["input_ids"])

    def anchor_condition(self, batch: dict) -> torch.Tensor:
        """Anchor-prompt embeddings (B, L, D) of batch["anchor_ids"] (B, L)."""
        return self.encode_prompt_ids(batch["anchor_ids"])

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, L, D) of the empty prompt "", one copy per row of `cond` (B, L, D)."""
        empty = self.encode_prompt_ids(self.tokenize([""]))
        return empty.to(cond.dtype).expand(cond.shape[0], *empty.shape[1:])

    def drop_condition(self, cond: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """`cond` (B, L, D) with the rows where `keep` (B,) is False replaced by the empty prompt's embeddings."""
        return torch.where(keep[:, None, None], cond, self.null_condition(cond))

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
        if 0.0 < guidance_scale < 1.0:
            raise UserError(f"guidance_scale {guidance_scale} is not supported by StableDiffusionPipeline (it "
                            "guides only above 1); use 0 (unconditional), 1 (conditional) or > 1")
        cond = self.encode_prompt_ids(input_ids)
        uncond = self.null_condition(cond)
        pipe = StableDiffusionPipeline(**{**self.pipeline.components, "unet": self.network,
                                          "scheduler": sampling_scheduler(self.pipeline.scheduler.config, sampler)},
                                       requires_safety_checker=False)
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
