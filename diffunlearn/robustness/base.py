"""What every attack shares: the context it runs in, its result, and how its success is judged.

An attack tries to bring the forgotten target back out of one model. Its attack success rate (ASR) is the share of
the images it produces that the run's judge recognises as the forgotten target (the label forget accuracy counts),
so an ASR and an FA are read on the same scale. Every random draw is seeded from the attack's `seed`: the same
seed gives the same ASR.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, List, Optional

import torch

from ..data.generated import generate, image_seed
from ..errors import UserError
from ..evaluation.metrics import share_interval
from ..training.fine_tune import seeded_rows

CONDITIONINGS = ("class", "text")


@dataclass
class AttackConfig:
    """Base of every attack's settings (`attack.NAME.key=value` on the command line)."""

    seed: int = 0

    def check(self) -> None:
        """Refuse settings out of range (one-line `UserError`)."""


def check_fractions(attack: str, key: str, values) -> None:
    if not values or any(not 0 < v < 1 for v in values):
        raise UserError(f"attack.{attack}.{key} must be a non-empty list of numbers in (0, 1), got {list(values)!r}")


@dataclass
class AttackContext:
    """One attacked model and what an attack needs around it.

    Attributes:
        cfg: the run config (forget target, judge, evaluation protocol).
        model: the attacked model wrapper (unlearned, base or RT), on `device`.
        load: a function giving a fresh copy of the attacked model (attacks that train change their copy only).
        judge: the run's judge.
        forget: the forget targets (`evaluation.targets.Target`), each with its judge label and condition.
        forget_set: D_f (real forget images, or the base model's samples of the forget prompts).
    """

    cfg: Any
    model: Any
    load: Callable
    judge: Any
    forget: list
    forget_set: Any
    device: Any = "cpu"

    def sampling(self, num_inference_steps=None, guidance_scale=None) -> tuple:
        """(steps, guidance scale) of an attack's sampling: its own settings where given, else the run's eval."""
        eval_cfg = self.cfg.eval
        return (num_inference_steps or eval_cfg.num_inference_steps,
                eval_cfg.guidance_scale if guidance_scale is None else guidance_scale)

    def condition(self, model, target, n: int):
        """The model's condition for `n` samples of `target`: class ids (n,) or prompt embeddings (n, L, D)."""
        cond = target.condition.to(model.device)
        if model.conditioning == "class":
            return cond.reshape(1).expand(n).clone()
        return model.encode_prompt_ids(cond.unsqueeze(0).expand(n, -1))

    def forget_batch(self, k: int, seed: int) -> dict:
        """k samples of D_f (a seeded draw; repeated when D_f has fewer), as one batch of tensors."""
        return seeded_rows(self.forget_set, k, seed)

    def recognised(self, images: torch.Tensor, target) -> torch.Tensor:
        """Per image (N,): does the judge recognise `target` (its label) in images (N, C, H, W) in [0, 1]?"""
        return self.judge.predict(images).cpu() == target.label

    def judged_samples(self, model, target, conditions, seeds: list, num_inference_steps: int,
                       guidance_scale: float) -> tuple:
        """(recognised (N,), images (N, C, H, W)): one sample per condition (N, ...) and seed, under the run's
        sampler with the given steps and guidance, judged against `target`."""
        eval_cfg = dataclasses.replace(self.cfg.eval, num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale)
        images = generate(model, conditions, seeds, eval_cfg)
        return self.recognised(images, target), images

    def sample_share(self, model, samples: int, seed: int, num_inference_steps: int, guidance_scale: float):
        """(share recognised, images) of `samples` plain samples per forget target, image j from seed
        image_seed(seed, target.seed_key, j), under the run's sampler."""
        hits, images = [], []
        for target in self.forget:
            conds = target.condition.unsqueeze(0).expand(samples, *target.condition.shape)
            seeds = [image_seed(seed, target.seed_key, j) for j in range(samples)]
            hit, batch = self.judged_samples(model, target, conds, seeds, num_inference_steps, guidance_scale)
            hits.append(hit)
            images.append(batch)
        return torch.cat(hits).double().mean().item(), torch.cat(images)


@dataclass
class AttackResult:
    """What one attack found on one model.

    Attributes:
        asr: share of the attacked samples the judge recognises as the forgotten target (worst case over the
            attack's settings grid when it has one).
        budget: what the attack spent (steps, passes, samples...).
        protocol: how it was run (settings, seeds, judge).
        curve: per-setting results (relearning: FA after each step count).
        images: the attack's best images (N, C, H, W) in [0, 1], for the gallery.
        samples: how many judged samples the worst cell's `asr` is a share of (its Wilson 95% interval,
            `asr_ci95`, is computed from it).
    """

    asr: float
    budget: dict
    protocol: dict
    curve: List[dict] = field(default_factory=list)
    images: Optional[torch.Tensor] = None
    samples: int = 0  # the judged samples behind `asr` (its worst cell), for its interval

    def to_dict(self) -> dict:
        return {"asr": self.asr, "asr_ci95": share_interval(self.asr, self.samples) if self.samples else None,
                "samples": self.samples, "budget": self.budget, "protocol": self.protocol, "curve": self.curve}


class Attack:
    """Base of the attacks: a registered class with `name`, `config_cls`, the conditioning kinds it applies to,
    and `run(ctx) -> AttackResult`. `trains` marks attacks that change model weights (they work on
    `ctx.load()` copies)."""

    name: ClassVar[str]
    config_cls: ClassVar[type] = AttackConfig
    conditionings: ClassVar[tuple] = CONDITIONINGS
    trains: ClassVar[bool] = False

    def __init__(self, cfg):
        self.cfg = cfg

    @classmethod
    def check_model(cls, config, model, run_cfg) -> None:
        """Refuse (one-line `UserError`) settings that do not fit the attacked model or the run's targets; the
        suite calls it before anything is written."""

    def run(self, ctx: AttackContext) -> AttackResult:
        raise NotImplementedError
