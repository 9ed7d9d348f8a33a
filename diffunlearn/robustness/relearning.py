"""Relearning: fine-tune the attacked model with the ordinary diffusion loss on k images of the forgotten target and
watch its forget accuracy come back (the direct form of SPQR-style benign fine-tuning, arXiv 2511.19558).

For each k, a fresh copy of the model trains on a seeded draw of k images of D_f (Adam, the run's `model.subset`,
antithetic timesteps, no condition dropout) and its forget accuracy is measured after each step count in `steps`
(plain samples under the attack's sampling settings). A model that relearns much faster than one that never saw
the target (RT, `--rt`) was hiding the target, not removing it. ASR: the forget accuracy after the last step count,
worst k; `curve` has every (k, step) point and `steps_to_fa` the first step count reaching `fa_threshold`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


from ..config import check_positive
from ..errors import UserError
from ..registry import register_attack
from ..training.fine_tune import FineTune
from .base import Attack, AttackConfig, AttackResult


@dataclass
class RelearningConfig(AttackConfig):
    k: List[int] = field(default_factory=lambda: [8, 32])  # forget images the model relearns from
    steps: List[int] = field(default_factory=lambda: [0, 5, 10, 25, 50, 100])  # FA measured after these
    lr: float = 1e-4
    batch_size: int = 8
    samples: int = 64  # samples per forget target at each measurement
    num_inference_steps: int = 10
    guidance_scale: Optional[float] = None  # null: the run's eval.guidance_scale
    fa_threshold: float = 0.5

    def check(self) -> None:
        check_positive("attack.relearning", lr=self.lr, batch_size=self.batch_size, samples=self.samples,
                       num_inference_steps=self.num_inference_steps)
        if not self.k or any(not isinstance(k, int) or k < 1 for k in self.k):
            raise UserError(f"attack.relearning.k must be a non-empty list of image counts >= 1, got {self.k!r}")
        if not self.steps or any(not isinstance(s, int) or s < 0 for s in self.steps):
            raise UserError(f"attack.relearning.steps must be a non-empty list of step counts >= 0, got "
                            f"{self.steps!r}")
        if not 0 < self.fa_threshold <= 1:
            raise UserError(f"attack.relearning.fa_threshold must be in (0, 1], got {self.fa_threshold!r}")


def steps_to(curve: list, k: int, threshold: float) -> Optional[int]:
    """The first measured step count at which the k-image run's FA reaches `threshold` (None: never)."""
    return next((p["step"] for p in curve if p["k"] == k and p["forget_accuracy"] >= threshold), None)


@register_attack
class Relearning(Attack):
    name = "relearning"
    config_cls = RelearningConfig
    trains = True

    def run(self, ctx) -> AttackResult:
        cfg = self.cfg
        _, guidance = ctx.sampling(guidance_scale=cfg.guidance_scale)
        curve, finals, best_images = [], [], None
        for k in cfg.k:
            model = ctx.load()
            tune = FineTune(model, ctx.forget_batch(k, cfg.seed + k), cfg.lr, cfg.batch_size, cfg.seed + k,
                            cfg.seed * 7919 + k * 100_003)
            model.network.eval()
            for step in sorted(set(cfg.steps)):
                tune.advance(step - tune.done)
                share, sampled = ctx.sample_share(model, cfg.samples, cfg.seed + 500_000, cfg.num_inference_steps,
                                                  guidance)
                curve.append({"k": k, "step": step, "forget_accuracy": share})
            finals.append(share)
            if share >= max(finals):
                best_images = sampled
        return AttackResult(
            asr=max(finals), curve=curve, images=best_images, samples=cfg.samples * len(ctx.forget),
            budget={"k": list(cfg.k), "max_steps": max(cfg.steps), "batch_size": cfg.batch_size,
                    "samples_per_measurement": cfg.samples * len(ctx.forget)},
            protocol={"optimizer": "adam", "lr": cfg.lr, "subset": ctx.cfg.model.subset,
                      "steps": sorted(set(cfg.steps)),
                      "sampler": ctx.cfg.eval.sampler, "num_inference_steps": cfg.num_inference_steps,
                      "guidance_scale": guidance, "seed": cfg.seed, "fa_threshold": cfg.fa_threshold,
                      "steps_to_fa": {str(k): steps_to(curve, k, cfg.fa_threshold) for k in cfg.k},
                      "asr": "forget accuracy after the last step count, worst k"})
