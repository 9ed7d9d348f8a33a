"""UCE: Unified Concept Editing, a closed-form edit of the cross-attention key / value projections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import MethodConfig, check_positive
from ..errors import UserError
from ..registry import register_method
from .base import UnlearningMethod


@dataclass
class UCEConfig(MethodConfig):
    name: str = "uce"
    lamb: float = 0.1  # weight of "stay at the old W" (the ridge term)
    erase_scale: float = 1.0  # weight of the forget-prompt -> anchor-prompt mapping
    preserve_scale: float = 0.1  # weight of keeping the remain prompts' (and the empty prompt's) outputs
    with_to_k: bool = True  # edit the key projections too (the values always)

    def __post_init__(self):
        check_positive("method", lamb=self.lamb, erase_scale=self.erase_scale, preserve_scale=self.preserve_scale)


def edit_projection(weight: torch.Tensor, erase: list, preserve: list, lamb: float, erase_scale: float,
                    preserve_scale: float) -> torch.Tensor:
    """W' = (lamb W + e sum v* c^T + p sum W c c^T) (lamb I + e sum c c^T + p sum c c^T)^-1, the minimiser of
    lamb ||W' - W||^2 + e sum ||W' c - v*||^2 + p sum ||W' c - W c||^2 (rows of `weight` (out, in) map embeddings c).

    Args:
        erase: (c, v*) pairs: token embeddings (n, in) of a forget prompt and the outputs (n, out) W gives its anchor.
        preserve: token embeddings (n, in) whose outputs stay.
    """
    w = weight.double()
    numerator, denominator = lamb * w, lamb * torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
    for context, values in erase:
        c, v = context.double(), values.double()
        numerator += erase_scale * v.T @ c
        denominator += erase_scale * c.T @ c
    for context in preserve:
        c = context.double()
        numerator += preserve_scale * (w @ c.T) @ c
        denominator += preserve_scale * c.T @ c
    return torch.linalg.solve(denominator, numerator, left=False).to(weight.dtype)


@register_method
class UCE(UnlearningMethod):
    """UCE (Gandikota et al., "Unified Concept Editing in Diffusion Models", WACV 2024), for SD concepts.

    One closed-form edit in `setup`, no training: in every cross-attention (`attn2`) layer, the value (and key)
    projection is re-solved so that the forget prompt's tokens, from its last word on (last word, end token and
    padding, aligned with the anchor prompt's from its last word on), map to what the old projection gives the
    anchor's tokens, while the remain prompts' and the empty prompt's tokens keep their outputs (rohitgandikota/
    unified-concept-editing, `edit_model` with technique "replace"). The unlearning steps then change nothing: run it
    with `train.steps=1` (the benchmark row does). Under a second on the tiny model's CPU.
    """

    name = "uce"
    config_cls = UCEConfig
    supports_concepts = True
    supports_classes: ClassVar[bool] = False
    supports_fsdp: ClassVar[bool] = False  # edits full weight matrices in place
    supported_subsets: ClassVar[tuple] = ("cross_attention", "all")  # it edits the projection weights themselves
    supported_families: ClassVar[tuple] = ("sd",)  # cross-attention (attn2) reading the text; SD3's joint attention

    def __init__(self, cfg, context):
        if not context.cfg.forget.is_concept:
            raise UserError(f"method 'uce' forgets prompts only (forget.prompts), got forget.classes "
                            f"{list(context.cfg.forget.classes)}; for classes use one of: sfr_on, ga, rl, salun, sa")
        super().__init__(cfg, context)
        self.residual = torch.zeros(())

    def _embeddings(self, prompts: list) -> tuple:
        """(token embeddings (N, L, D), real-token counts (N,)) of prompts, from the frozen text encoder."""
        pipe = self.model.pipeline
        tokens = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                return_tensors="pt")
        with torch.no_grad():
            embeddings = self.model.encode_prompt_ids(tokens.input_ids.to(self.model.device))
        return embeddings.float(), tokens.attention_mask.sum(1)

    def setup(self):
        f = self.context.cfg.forget
        layers = [m for name, m in self.model.network.named_modules() if name.endswith("attn2")]
        projections = [layer.to_v for layer in layers] + ([layer.to_k for layer in layers] if self.cfg.with_to_k
                                                          else [])
        old = list(f.prompts)
        new = [f.anchor_for(i) for i in range(len(old))]
        old_emb, old_len = self._embeddings(old)
        new_emb, new_len = self._embeddings(new)
        keep_emb, _ = self._embeddings(list(dict.fromkeys(list(f.remain_prompts) + [""])))
        pairs = []
        for i in range(len(old)):
            start_old, start_new = int(old_len[i]) - 2, int(new_len[i]) - 2  # the last word token
            span = old_emb.shape[1] - max(start_old, start_new)
            pairs.append((old_emb[i, start_old:start_old + span], new_emb[i, start_new:start_new + span]))
        residuals = []
        with torch.no_grad():
            for projection in projections:
                weight = projection.weight
                erase = [(c, new_tokens @ weight.T.float()) for c, new_tokens in pairs]
                edited = edit_projection(weight, erase, list(keep_emb), self.cfg.lamb, self.cfg.erase_scale,
                                         self.cfg.preserve_scale)
                weight.copy_(edited)
                residuals += [(c @ weight.T.float() - v).norm() / v.norm() for c, v in erase]
        self.residual = torch.stack(residuals).mean()
        return {"uce_layers": len(projections), "uce_relative_residual": self.residual.item()}

    def training_step(self, step: int) -> dict:
        return {"uce_relative_residual": self.residual}
