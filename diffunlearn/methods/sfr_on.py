"""SFR-on: saliency-masked, adaptively weighted forgetting interleaved with remain steps on one optimizer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import check_choice, check_positive
from ..errors import UserError
from ..registry import register_method
from ..training.streams import Stream
from .base import UnlearningMethod, adaptive_weights
from .lasting import InnerAttackers, LastingConfig
from .saliency import fisher_saliency_mask


@dataclass
class SFROnConfig(LastingConfig):
    """SFR-on settings (defaults: the reference's class-conditional DDPM setup).

    Ablations: `saliency_mask=false` (no mask), `adaptive_weights=false` (uniform weights, i.e. lam = 0),
    `remain=false saliency_mask=false adaptive_weights=false` (plain gradient ascent). The lasting option's inner
    attackers (`relearn_steps`, `condition_attack_steps`) and prior mapping (`prior_weight`), see `methods/lasting.py`,
    are off by default.
    """

    name: str = "sfr_on"
    forget_every: int = 1  # K: a forget step every K iterations, a remain step every iteration
    alpha: float = 10.0  # alpha0, the forget-loss scale
    alpha_schedule: str = "cosine"  # cosine: alpha_t = alpha0 (1 + cos(pi t / T)) / 2; constant: alpha0
    adaptive_weights: bool = True
    lam: float = 0.5  # w_i proportional to l_i^-lam
    saliency_mask: bool = True
    gamma: float = 1.0  # mask threshold on F_f / F_r
    mask_batches: int = 8  # forget and remain batches for the Fisher diagonals
    mask_guidance_scale: Optional[float] = 2.0  # Fisher of the guided prediction; null = plain conditional loss
    mask_grad_clip: Optional[float] = 1.0
    forget_clip: Optional[float] = 1.0  # c_f
    remain: bool = True
    remain_weight: float = 1.0  # beta_r
    remain_clip: Optional[float] = 1.0  # c_r
    slow_blend: float = 1.0  # beta: theta = (1 - beta) theta_prev + beta theta after each iteration; 1 = off

    def __post_init__(self):
        super().__post_init__()
        check_positive("method", forget_every=self.forget_every, mask_batches=self.mask_batches)
        check_choice("method", "alpha_schedule", self.alpha_schedule, ("cosine", "constant"))
        for key in ("alpha", "lam", "gamma", "remain_weight"):
            if getattr(self, key) < 0:
                raise UserError(f"method.{key} must be >= 0, got {getattr(self, key)!r}")
        if self.prior_weight and not self.remain:
            raise UserError(f"method.prior_weight {self.prior_weight!r} needs the remain step (method.remain=true); "
                            "valid with remain=false: 0")
        if not 0.0 < self.slow_blend <= 1.0:
            raise UserError(f"method.slow_blend must be in (0, 1], got {self.slow_blend!r}")


def alpha_at(step: int, total: int, alpha0: float, schedule: str) -> float:
    """Forget-loss scale at `step`: cosine decay from alpha0 to 0 over `total` steps, or constant."""
    if schedule == "constant":
        return alpha0
    return alpha0 * (1 + math.cos(math.pi * step / total)) / 2


@register_method
class SFROn(UnlearningMethod):
    """SFR-on (Huang et al., "Unified Gradient-based Machine Unlearning with Remain Geometry Enhancement",
    NeurIPS 2024, arXiv 2409.19732).

    Iteration t: if t % K == 0, a slow forget step on D_f: loss -alpha_t * sum_i w_i l_i with adaptive weights w
    (concepts: alpha_t * the anchor-mapping loss, see `forget_loss`), gradient masked by the Fisher-ratio saliency
    mask and clipped to c_f (masked elements do not move); then a fast remain step on D_r: beta_r * mean task
    loss, clipped to c_r. Both steps share one optimizer.
    """

    name = "sfr_on"
    config_cls = SFROnConfig
    supports_concepts = True

    def setup(self):
        self.mask = None
        self.inner = InnerAttackers(self.cfg, self.context) if self.cfg.lasting else None
        if not self.cfg.saliency_mask:
            return {"mask_density": 1.0}
        self.mask, info = fisher_saliency_mask(self.context, self.cfg.mask_batches, self.cfg.gamma,
                                               self.cfg.mask_guidance_scale, self.cfg.mask_grad_clip)
        return info

    def forget_loss(self, step: int, stream: int = Stream.FORGET, cond=None) -> torch.Tensor:
        """The loss a forget step minimises.

        Classes: -sum_i w_i l_i on a D_f batch (weighted ascent). Concepts: mean_i ||pred(x_t, c_forget) -
        stopgrad pred(x_t, c_anchor)||^2 on images of the forget prompts (the forget prompt is mapped onto its
        anchor, no ascent), as in the reference's Stable Diffusion setup. `stream` and `cond` (an attacked forget
        condition, concepts only): see `methods/lasting.py`.
        """
        context = self.context
        batch = context.forget_batch(step)
        if context.cfg.forget.is_concept:
            return context.anchored_losses(batch, step, stream=stream, cond=cond).mean()
        losses = context.losses(batch, step, stream=stream)
        lam = self.cfg.lam if self.cfg.adaptive_weights else 0.0
        weights = adaptive_weights(losses, lam, accelerator=context)
        # DDP averages gradients over processes; scale so the sum over the global batch is what is ascended
        return -(weights * losses).sum() * context.num_processes

    def training_step(self, step: int) -> dict:
        cfg, context, logs = self.cfg, self.context, {}
        before = [p.detach().clone() for _, p in context.params] if cfg.slow_blend < 1 else None
        if step % cfg.forget_every == 0:
            alpha = alpha_at(step, context.total_steps, cfg.alpha, cfg.alpha_schedule)
            if self.inner is not None:  # the lasting terms' gradients, added to this forget step's before its update
                logs.update(self.inner.accumulate(step, lambda stream, cond=None: self.forget_loss(step, stream, cond),
                                                  alpha))
            loss_f = self.forget_loss(step)
            context.update(alpha * loss_f, clip=cfg.forget_clip, mask=self.mask)
            logs["forget_loss"] = loss_f.detach() if self.context.cfg.forget.is_concept else -loss_f.detach()
        if cfg.remain:
            # the lasting option's prior mapping (methods/lasting.py); first: its targets swap the base weights in
            prior = self.inner.prior_loss(step) if cfg.prior_weight else None
            loss_r = context.losses(context.remain_batch(step), step, stream=Stream.REMAIN).mean()
            total = cfg.remain_weight * loss_r
            if prior is not None:
                total = total + cfg.prior_weight * prior
                logs["prior_loss"] = prior.detach()
            context.update(total, clip=cfg.remain_clip)
            logs["remain_loss"] = loss_r.detach()
        if before is not None:
            with torch.no_grad():
                for (_, p), p_prev in zip(context.params, before):
                    p.lerp_(p_prev, 1 - cfg.slow_blend)
        return logs
