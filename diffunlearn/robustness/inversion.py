"""Condition inversion (class-conditioned families): UnlearnDiffAtk's objective moved from prompt tokens to the
class embedding (OPTML-Group/Diffusion-MU-Attack optimises prefix tokens against the unlearned model's denoising
loss on images of the concept; a class-conditioned model has no tokens, so the free variable is the embedding).

Every class-embedding table of the network (`DiffusionModel.class_embeddings`: DDPM's `class_embedding`, each DiT
block's label embedder) gets a free vector for the forgotten class, initialised from that class's row; the network
stays frozen. The vectors are fitted with Adam to minimise the attacked model's denoising loss on k images of the
target (seeded draws of x_t, t), then the model samples with them and the judge scores the samples. If the
knowledge is still in the network, some embedding calls it back. ASR: the share of those samples recognised as the
target, worst forget target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import check_positive
from ..errors import UserError
from ..models.conditions import free_class_embedding
from ..registry import register_attack
from .base import Attack, AttackConfig, AttackResult

INITS = ("forget", "null")


@dataclass
class InversionConfig(AttackConfig):
    iterations: int = 100
    lr: float = 0.01
    k: int = 32  # images of the target the embedding is fitted to
    batch_size: int = 16
    init: str = "forget"  # the forgotten class's row, or the null class's row
    samples: int = 64  # samples per forget target with the found embedding
    num_inference_steps: Optional[int] = None  # null: the run's eval.num_inference_steps
    guidance_scale: Optional[float] = None  # null: the run's eval.guidance_scale

    def check(self) -> None:
        check_positive("attack.inversion", lr=self.lr, k=self.k, batch_size=self.batch_size, samples=self.samples)
        if not isinstance(self.iterations, int) or self.iterations < 0:
            raise UserError(f"attack.inversion.iterations must be an integer >= 0, got {self.iterations!r}")
        if self.init not in INITS:
            raise UserError(f"unknown attack.inversion.init {self.init!r}; valid: {', '.join(INITS)}")


@register_attack
class Inversion(Attack):
    name = "inversion"
    config_cls = InversionConfig
    conditionings = ("class",)

    def run(self, ctx) -> AttackResult:
        cfg, model = self.cfg, ctx.model
        steps, guidance = ctx.sampling(cfg.num_inference_steps, cfg.guidance_scale)
        trainable = [p for p in model.network.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        shares, best_images, losses = [], None, []
        try:
            for i, target in enumerate(ctx.forget):
                label = int(target.condition)
                init = label if cfg.init == "forget" else int(model.null_condition(target.condition.reshape(1)))
                images = ctx.forget_batch(cfg.k, cfg.seed + i)
                with free_class_embedding(model, label, init) as free:
                    optimizer = torch.optim.Adam(free, lr=cfg.lr)
                    for step in range(cfg.iterations):
                        rows = torch.randperm(cfg.k, generator=torch.Generator().manual_seed(cfg.seed + step))
                        batch = {key: value[rows[:cfg.batch_size]] for key, value in images.items()}
                        generator = torch.Generator(model.device).manual_seed(cfg.seed * 7919 + step)
                        loss = model.training_losses(batch, generator=generator, antithetic=True).mean()
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        losses.append(loss.item())
                    share, sampled = ctx.sample_share(model, cfg.samples, cfg.seed + 600_000, steps, guidance)
                shares.append(share)
                if share >= max(shares):
                    best_images = sampled
        finally:
            for p in trainable:
                p.requires_grad_(True)
        return AttackResult(
            asr=max(shares), images=best_images, samples=cfg.samples * len(ctx.forget),
            curve=[{"target": t.name, "asr": s} for t, s in zip(ctx.forget, shares)],
            budget={"iterations": cfg.iterations, "batch_size": cfg.batch_size, "k": cfg.k,
                    "forward_backward_passes": cfg.iterations * len(ctx.forget),
                    "samples": cfg.samples * len(ctx.forget)},
            protocol={"free_variable": "the forgotten class's row of every class-embedding table",
                      "objective": "the attacked model's denoising loss on k images of the target (antithetic t)",
                      "optimizer": "adam", "lr": cfg.lr, "init": cfg.init, "sampler": ctx.cfg.eval.sampler,
                      "num_inference_steps": steps, "guidance_scale": guidance, "seed": cfg.seed,
                      "final_loss": losses[-1] if losses else None, "asr": "worst forget target"})
