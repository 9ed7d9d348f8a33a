"""RL: relabelling. Generators: the forgotten class's condition learns other classes' images. Classifiers: the
forget images learn random other labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import MethodConfig
from ..registry import register_method
from .base import UnlearningMethod


@dataclass
class RLConfig(MethodConfig):
    name: str = "rl"
    remain_weight: float = 1.0  # weight of the ordinary remain loss added to the relabel loss
    clip: Optional[float] = 1.0


def relabel_to_forgotten(batch: dict, forget_classes, generator) -> dict:
    """A remain batch whose labels are replaced by randomly chosen forgotten classes: (B,) -> (B,)."""
    classes = torch.as_tensor(list(forget_classes), device=batch["labels"].device)
    pick = torch.randint(0, len(classes), batch["labels"].shape, generator=generator, device=classes.device)
    return {**batch, "labels": classes[pick]}


@register_method
class Relabel(UnlearningMethod):
    """Relabelling (SalUn's RL baseline, Fan et al., ICLR 2024). One update per step on
    `relabel_loss + remain_weight * remain_loss`.

    Class-conditional generators: the forgotten class's condition learns to denoise images of retained classes
    (a remain batch under forgotten labels), while the remain loss keeps those classes. Classifiers (a family with
    a `relabelled(batch, generator)` hook): the forget batch with each label replaced by a random other class, i.e.
    fine-tuning on D_f-relabelled + D_r.
    """

    name = "rl"
    config_cls = RLConfig
    mask = None  # SalUn sets a saliency mask

    def training_step(self, step: int) -> dict:
        trainer = self.trainer
        remain = trainer.remain_batch(step)
        family_relabel = getattr(self.model, "relabelled", None)
        if family_relabel is not None:
            relabelled = family_relabel(trainer.forget_batch(step), trainer.generator(step, 3))
        else:
            relabelled = relabel_to_forgotten(remain, trainer.cfg.forget.classes, trainer.generator(step, 3))
        loss_rl = trainer.losses(relabelled, step, stream=1).mean()
        loss_r = trainer.losses(remain, step, stream=2).mean()
        trainer.update(loss_rl + self.cfg.remain_weight * loss_r, clip=self.cfg.clip, mask=self.mask)
        return {"relabel_loss": loss_rl.detach(), "remain_loss": loss_r.detach()}
