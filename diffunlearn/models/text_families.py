"""What the text-to-image families (SD, SD3) share: trainable subsets (all / the text-conditioned attention / LoRA),
saving with LoRA fused, and the prompt conditions built from the frozen text encoders.

A family sets `lora_targets` (module names LoRA adapts), `attention_modules` (suffixes of the modules that read the
text: SD's `attn2`, SD3's context projections), `lora_layers_key` (the `save_lora_weights` argument of its
network), lists its `text_encoders()` and implements `_encode(input_ids, token_embeds=None)`: the condition tensor
of token ids, with the token-embedding lookups' outputs replaced by `token_embeds` when given.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..errors import UserError


class TextFamilyMixin:
    lora_targets: tuple = ()
    attention_modules: tuple = ()
    lora_layers_key: str = "transformer"  # save_lora_weights(<key>_lora_layers=..., <key>_lora_adapter_metadata=...)

    # --- weights ------------------------------------------------------------------------------------------------
    @property
    def has_lora(self) -> bool:
        return bool(getattr(self.network, "peft_config", None))

    def set_trainable(self, subset: str = "all", lora_rank: int = 4) -> None:
        """Choose the network weights unlearning may change.

        Args:
            subset: "all" (every weight of the denoiser), "cross_attention" (the modules that read the text, as
                ESD-x trains: `attention_modules`) or "lora" (new LoRA adapters of rank `lora_rank` on
                `lora_targets`; the base weights stay frozen and LoRA's zero-initialised up-projection leaves the
                outputs unchanged).
            lora_rank: rank of the LoRA adapters (alpha = rank, so their scale is 1).
        """
        super().set_trainable(subset, lora_rank)
        for encoder in self.text_encoders():
            encoder.requires_grad_(False)
        self.pipeline.vae.requires_grad_(False)
        if self.has_lora and subset != "lora":
            raise UserError(f"model.subset={subset!r} on a {self.family} network that already holds LoRA adapters; "
                            "use subset=lora")
        self.network.requires_grad_(subset == "all")
        if subset == "cross_attention":
            for name, module in self.network.named_modules():
                if name.split(".")[-1] in self.attention_modules:
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
                                                target_modules=list(self.lora_targets)))
        for name, p in self.network.named_parameters():
            p.requires_grad_(".lora_" in name)

    def save_pretrained(self, path) -> None:
        """Save a stock pipeline folder (LoRA fused into a copy of the network) and, for a LoRA model, also its
        adapter in diffusers' format under `path/lora` (for `load_lora_weights` on the base pipeline)."""
        if not self.has_lora:
            self.pipeline.save_pretrained(path, safe_serialization=True)
            return
        from peft.utils import get_peft_model_state_dict

        fused = copy.deepcopy(self.network)
        fused.fuse_lora()
        fused.unload_lora()
        component = "unet" if self.lora_layers_key == "unet" else "transformer"
        self.stock_pipeline(**{component: fused}).save_pretrained(path, safe_serialization=True)
        self.pipeline_class.save_lora_weights(
            Path(path) / "lora", safe_serialization=True,
            **{f"{self.lora_layers_key}_lora_layers": get_peft_model_state_dict(self.network),
               f"{self.lora_layers_key}_lora_adapter_metadata": self.network.peft_config["default"].to_dict()})

    def stock_pipeline(self, **replace):
        """A stock pipeline of this family on the model's components, with `replace` swapped in."""
        return self.pipeline_class(**{**self.pipeline.components, **replace}, **self.pipeline_options())

    def pipeline_options(self) -> dict:
        """The non-component settings a new stock pipeline of this family must be built with."""
        return {"requires_safety_checker": False} if "safety_checker" in self.pipeline.components else {}

    # --- conditions ---------------------------------------------------------------------------------------------
    def text_encoders(self) -> list:
        raise NotImplementedError

    def special_token_ids(self) -> set:
        """Ids of the tokenizers' start, end and padding tokens (prompt searches leave them out)."""
        tokenizers = [self.pipeline.tokenizer] + [getattr(self.pipeline, "tokenizer_2", None)]
        return {i for tok in tokenizers if tok is not None
                for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)}

    def check_shared_vocabulary(self) -> None:
        """Two-encoder families (SD3, SDXL) tokenize once, with `tokenizer`: `tokenizer_2` must share its vocabulary
        (true of their CLIP tokenizers), only its padding may differ."""
        if self.pipeline.tokenizer.get_vocab() != self.pipeline.tokenizer_2.get_vocab():
            raise UserError(f"tokenizer and tokenizer_2 of this {self.pipeline_class.__name__} have different "
                            f"vocabularies; the {self.family} family needs them to share one (as its CLIP tokenizers "
                            "do)")

    def second_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`tokenizer_2`'s ids of the same prompts: the shared vocabulary, its own padding after the end token."""
        one, two = self.pipeline.tokenizer, self.pipeline.tokenizer_2
        if one.pad_token_id == two.pad_token_id:
            return input_ids
        ended = (input_ids == one.eos_token_id).cumsum(1) > 0
        after = ended & ~(ended.cumsum(1) == 1)
        return input_ids.masked_fill(after, two.pad_token_id)

    def token_embedding_table(self) -> torch.Tensor:
        """Token embeddings (V, E) of the shared vocabulary, one row per id (frozen): the text encoders' tables
        side by side (E = the sum of their widths)."""
        return torch.cat([e.get_input_embeddings().weight.detach() for e in self.text_encoders()], -1)

    def split_token_embeds(self, token_embeds):
        """`token_embeds` (B, L, E) split into each text encoder's part, or a None per encoder."""
        if token_embeds is None:
            return [None] * len(self.text_encoders())
        widths = [e.get_input_embeddings().embedding_dim for e in self.text_encoders()]
        return list(token_embeds.split(widths, -1))

    @staticmethod
    def run_encoder(encoder, input_ids: torch.Tensor, token_embeds=None, **kwargs):
        """`encoder(input_ids, **kwargs)`, with its token-embedding lookup's output replaced by `token_embeds`
        (B, L, E) when given (differentiable in them: relaxed tokens for prompt attacks)."""
        if token_embeds is None:
            return encoder(input_ids.to(encoder.device), **kwargs)
        lookup = encoder.get_input_embeddings()
        handle = lookup.register_forward_hook(lambda module, inputs, output: token_embeds.to(output.dtype))
        try:
            return encoder(input_ids.to(encoder.device), **kwargs)
        finally:
            handle.remove()

    @torch.no_grad()
    def encode_prompt_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Frozen prompt conditions of token ids (B, L)."""
        return self._encode(input_ids)

    def encode_token_embeddings(self, input_ids: torch.Tensor, token_embeds: torch.Tensor) -> torch.Tensor:
        """Conditions of token ids (B, L) whose token embeddings are `token_embeds` (B, L, E) (rows of
        `token_embedding_table`; differentiable: relaxed tokens for prompt attacks)."""
        return self._encode(input_ids, token_embeds)

    def condition(self, batch: dict) -> torch.Tensor:
        """Prompt conditions of batch["input_ids"] (B, L)."""
        return self.encode_prompt_ids(batch["input_ids"])

    def anchor_condition(self, batch: dict) -> torch.Tensor:
        """Anchor-prompt conditions of batch["anchor_ids"] (B, L)."""
        return self.encode_prompt_ids(batch["anchor_ids"])

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """Conditions of the empty prompt "", one copy per row of `cond`."""
        empty = self.encode_prompt_ids(self.tokenize([""]))
        return empty.to(cond.dtype).expand(cond.shape[0], *empty.shape[1:])

    def drop_condition(self, cond: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """`cond` with the rows where `keep` (B,) is False replaced by the empty prompt's conditions."""
        return torch.where(keep[:, None, None], cond, self.null_condition(cond))

    def pooled_sample(self, pipe, input_ids, generator, num_inference_steps, guidance_scale) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] from `pipe` (a stock SDXL / SD3 pipeline on this model's components) for
        prompt token ids (B, L): the packed conditions' prompt and pooled embeddings, the null condition's as the
        negative (guidance 0: the null condition as the prompt)."""
        self.check_guidance(guidance_scale)
        cond = self.encode_prompt_ids(input_ids)
        (states, pooled), (null_states, null_pooled) = self.unpack(cond), self.unpack(self.null_condition(cond))
        pipe.set_progress_bar_config(disable=True)
        prompt = (null_states, null_pooled) if guidance_scale == 0 else (states, pooled)
        size = self.image_shape()[-1]
        return pipe(prompt_embeds=prompt[0], pooled_prompt_embeds=prompt[1], negative_prompt_embeds=null_states,
                    negative_pooled_prompt_embeds=null_pooled, guidance_scale=guidance_scale, height=size, width=size,
                    num_inference_steps=num_inference_steps, generator=generator, output_type="pt").images

    def check_guidance(self, guidance_scale: float) -> None:
        """The stock text-to-image pipelines guide only above 1 and sample the prompt alone at or below it: 0
        (unconditional: the empty prompt as the prompt), 1 or > 1 are served, 0 < s < 1 is refused."""
        if 0.0 < guidance_scale < 1.0:
            raise UserError(f"guidance_scale {guidance_scale} is not supported by {self.pipeline_class.__name__} "
                            "(it guides only above 1); use 0 (unconditional), 1 (conditional) or > 1")
