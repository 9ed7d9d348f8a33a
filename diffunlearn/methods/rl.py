"""RL: relabelling. Generators: the forgotten class's (or prompt's) condition learns other images. Classifiers: the
forget images learn random other labels."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import MethodConfig
from ..data.sets import remain_classes
from ..distributed import global_draw
from ..errors import choice_error
from ..registry import register_method
from ..training.streams import Stream
from .base import UnlearningMethod

RELABEL_TARGETS = ("retained_images", "pseudo_label")


@dataclass
class RLConfig(MethodConfig):
    name: str = "rl"
    remain_weight: float = 1.0  # weight of the ordinary remain loss added to the relabel loss
    clip: Optional[float] = 1.0
    # generators: retained_images = a remain batch under the forgotten labels, denoising loss; pseudo_label =
    # SalUn's generation loss: on a forget batch, pred(x_t | forgotten class) -> stopgrad pred(x_t | c'), c' a
    # random retained class, mean squared error per element (classifiers: random other labels either way)
    target: str = "retained_images"

    def __post_init__(self):
        if self.target not in RELABEL_TARGETS:
            raise choice_error("method.target", self.target, RELABEL_TARGETS)


def _draws(choices: int, size: int, generator, shard: tuple) -> torch.Tensor:
    """`size` indices drawn uniformly from range(choices) for the global batch, this process's slice (`shard`, see
    `Trainer.shard`), so a sample's draw does not depend on the number of processes."""
    return global_draw(lambda n: torch.randint(0, choices, (n,), generator=generator, device=generator.device),
                       size, shard)


def relabel(batch: dict, classes, generator, shard: tuple = (0, 1)) -> dict:
    """The batch with each label replaced by one drawn uniformly from `classes`: (B,) -> (B,)."""
    classes = torch.as_tensor(list(classes), device=generator.device)
    pick = _draws(len(classes), len(batch["labels"]), generator, shard)
    return {**batch, "labels": classes[pick].to(batch["labels"].device)}


def relabel_prompts(batch: dict, prompt_ids: torch.Tensor, generator, shard: tuple = (0, 1)) -> dict:
    """The text batch with each sample's prompt replaced by one of `prompt_ids` (P, L), drawn as `relabel` draws."""
    pick = _draws(len(prompt_ids), len(batch["input_ids"]), generator, shard)
    return {**batch, "input_ids": prompt_ids.to(batch["input_ids"].device)[pick.to(batch["input_ids"].device)]}


@register_method
class Relabel(UnlearningMethod):
    """Relabelling (SalUn's RL baseline, Fan et al., ICLR 2024). One update per step on
    `relabel_loss + remain_weight * remain_loss`.

    Class-conditional generators, `target` retained_images: the forgotten class's condition learns to denoise
    images of retained classes (a remain batch under forgotten labels), while the remain loss keeps those classes.
    `target` pseudo_label (SalUn's Eq. for generation, as its DDPM code runs it): on forget images, the prediction
    under the forgotten class is pulled toward the (detached) prediction under a random retained class c' at the
    same x_t and t, a per-element mean squared error (torch `MSELoss`) beside the remain loss summed over (C, H, W).
    Concepts (text families, `forget.prompts`): retained_images = remain images (D_r: the anchors' and remain
    prompts' images) under the forget prompts; pseudo_label = the prediction under the forget prompt pulled toward
    the detached prediction under its anchor prompt (SalUn's Stable Diffusion code maps onto a pseudo prompt the
    same way), per-element mean squared error.
    Classifiers (a family with a `relabelled(batch, generator)` hook): the forget batch with each label replaced
    by a random other class, i.e. fine-tuning on D_f-relabelled + D_r.
    """

    name = "rl"
    config_cls = RLConfig
    supports_concepts = True
    mask = None  # SalUn sets a saliency mask

    @functools.cached_property
    def forget_prompt_ids(self) -> torch.Tensor:
        """Token ids (P, L) of the forget prompts (concepts), tokenized once."""
        return self.model.tokenize(list(self.context.cfg.forget.prompts))

    def relabel_loss(self, step: int) -> torch.Tensor:
        context = self.context
        family_relabel = getattr(self.model, "relabelled", None)
        if family_relabel is not None:
            relabelled = family_relabel(context.forget_batch(step), context.generator(step, Stream.RELABEL))
            return context.losses(relabelled, step, stream=Stream.FORGET).mean()
        concept = context.cfg.forget.is_concept
        if concept and self.cfg.target == "retained_images":
            relabelled = relabel_prompts(context.remain_batch(step), self.forget_prompt_ids,
                                         context.generator(step, Stream.RELABEL), context.shard)
            return context.losses(relabelled, step, stream=Stream.FORGET).mean()
        if concept:
            return context.anchored_losses(context.forget_batch(step), step, stream=Stream.FORGET, mean=True).mean()
        if self.cfg.target == "retained_images":
            relabelled = relabel(context.remain_batch(step), context.cfg.forget.classes, context.generator(step, Stream.RELABEL),
                                 context.shard)
            return context.losses(relabelled, step, stream=Stream.FORGET).mean()
        forget = context.forget_batch(step)
        pseudo = relabel(forget, remain_classes(context.cfg, self.model), context.generator(step, Stream.RELABEL), context.shard)
        return context.anchored_losses(forget, step, stream=Stream.FORGET, anchor=self.model.condition(pseudo), mean=True).mean()

    def training_step(self, step: int) -> dict:
        context = self.context
        loss_rl = self.relabel_loss(step)
        loss_r = context.losses(context.remain_batch(step), step, stream=Stream.REMAIN).mean()
        context.update(loss_rl + self.cfg.remain_weight * loss_r, clip=self.cfg.clip, mask=self.mask)
        return {"relabel_loss": loss_rl.detach(), "remain_loss": loss_r.detach()}
