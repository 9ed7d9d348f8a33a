"""ESD: Erased Stable Diffusion, the concept's prediction trained toward the base model's negative guidance."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from ..config import MethodConfig
from ..errors import UserError
from ..models.base import squared_error
from ..registry import register_method
from ..training.streams import Stream
from .base import UnlearningMethod


@dataclass
class ESDConfig(MethodConfig):
    name: str = "esd"
    eta: float = 1.0  # negative-guidance strength of the target
    clip: Optional[float] = None  # gradient-norm clip of each step; null = none (the paper clips nothing)

    def __post_init__(self):
        if self.eta < 0:
            raise UserError(f"method.eta must be >= 0, got {self.eta!r}")


class BaseWeights:
    """The frozen base model's view of the trainable weights, swapped in place when a target is computed.

    Only the trainable subset can differ from the base model, so only it is stored: with ESD-x
    (`model.subset=cross_attention`, the `attn2` modules) that is a few percent of the UNet, where a frozen copy of
    the network would double its weight memory. LoRA needs no copy at all: disabling the adapters is the base model.
    One scratch buffer holds the current weights during the swap (2x the subset in all, allocated once). Not
    diffusers' `EMAModel.store/restore`: `store` copies the weights to the CPU on every call, a host round trip per
    training step here.
    """

    def __init__(self, model, params):
        self.model, self.params = model, [p for _, p in params]
        self.lora = bool(getattr(model.network, "peft_config", None))
        self.base = [] if self.lora else [p.detach().clone() for p in self.params]
        self.scratch = [] if self.lora else [torch.empty_like(p) for p in self.params]

    @contextlib.contextmanager
    def active(self):
        """Inside the block the network computes the base model's predictions; weights are restored after."""
        if self.lora:
            self.model.network.disable_adapters()
            try:
                yield
            finally:
                self.model.network.enable_adapters()
            return
        with torch.no_grad():
            for p, scratch, base in zip(self.params, self.scratch, self.base):
                scratch.copy_(p)
                p.copy_(base)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, scratch in zip(self.params, self.scratch):
                    p.copy_(scratch)


def negative_guidance_target(eps_null: torch.Tensor, eps_concept: torch.Tensor, eta: float) -> torch.Tensor:
    """ESD's target eps_base(x_t, null) - eta * (eps_base(x_t, c) - eps_base(x_t, null)); (B, C, h, w) each."""
    return eps_null - eta * (eps_concept - eps_null)


@register_method
class ESD(UnlearningMethod):
    """ESD (Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023), for SD concepts.

    Step: loss = mean_i ||eps(x_t, c_forget) - [eps_0(x_t, null) - eta (eps_0(x_t, c_forget) - eps_0(x_t, null))]||^2
    summed over (C, h, w), where eps_0 is the frozen base model (see `BaseWeights`). ESD-x trains the
    cross-attention only: run it with `model.subset=cross_attention` (the benchmark's ESD row does); `all` trains
    the whole UNet. The paper uses lr 1e-5, batch 1, 1000 steps on SD v1.4.

    x_t: the paper noises latents it samples from the model being trained; here x_t is a forget-set image (the
    base model's own samples of the forget prompt, D_f) noised to a random t, which needs no sampling per step.
    """

    name = "esd"
    config_cls = ESDConfig
    supports_concepts = True
    supports_classes: ClassVar[bool] = False
    supports_fsdp: ClassVar[bool] = False  # its frozen-base targets swap weights in place: not checked on shards

    def __init__(self, cfg, context):
        if not context.cfg.forget.is_concept:
            raise UserError(f"method 'esd' forgets prompts only (forget.prompts), got forget.classes "
                            f"{list(context.cfg.forget.classes)}; for classes use one of: sfr_on, ga, rl, salun, sa")
        super().__init__(cfg, context)

    def setup(self):
        self.base = BaseWeights(self.model, self.context.params)
        return {"esd_stored_base_elements": sum(p.numel() for p in self.base.base)}

    def targets(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Negative-guidance targets (B, C, h, w) of the base model for x_t (B, C, h, w), t (B,), cond (B, L, D)."""
        model = self.model
        with torch.no_grad(), self.base.active():
            both = model.predict(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                 torch.cat([model.null_condition(cond), cond]))
        eps_null, eps_concept = both.chunk(2)
        return negative_guidance_target(eps_null, eps_concept, self.cfg.eta)

    def training_step(self, step: int) -> dict:
        context, model = self.context, self.model
        batch = context.forget_batch(step)
        _, _, t, x_t = model.noised(batch, context.generator(step, Stream.FORGET), context.train_cfg.antithetic, context.shard)
        cond = model.condition(batch)
        target = self.targets(x_t, t, cond)
        loss = squared_error(model.predict(x_t, t, cond), target).mean()
        context.update(loss, clip=self.cfg.clip)
        return {"esd_loss": loss.detach()}
