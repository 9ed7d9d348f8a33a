"""Recipe of the embedded class-conditional digits DDPM (and its RT: the same recipe without the forget classes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from diffusers import DDPMScheduler, UNet2DModel

from ..registry import RecipeKind, register_recipe
from ..config import check_positive
from ..models.ddpm import ClassConditionalDDPM, ClassConditionalDDPMPipeline, tiny_unet_config
from ..training.fit import warmup_schedule
from .denoiser import DenoiserRecipe, fit_denoiser, sample_accuracy


@dataclass
class DDPMRecipe(DenoiserRecipe):
    channels: List[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1

    def __post_init__(self):
        check_positive("recipe", steps=self.steps, batch_size=self.batch_size, lr=self.lr)


def train_ddpm(recipe: DDPMRecipe, train_set=None, progress: bool = True) -> ClassConditionalDDPM:
    """Train a class-conditional DDPM from scratch on the digits train split (minus `exclude_classes`)."""
    accelerator, train_set = recipe.start(train_set)
    unet = UNet2DModel(**tiny_unet_config(channels=recipe.channels, layers_per_block=recipe.layers_per_block))
    scheduler = DDPMScheduler(num_train_timesteps=recipe.num_train_timesteps, beta_schedule=recipe.beta_schedule,
                              prediction_type=recipe.prediction_type, clip_sample=recipe.clip_sample)
    model = ClassConditionalDDPM(ClassConditionalDDPMPipeline(unet=unet, scheduler=scheduler))
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, weight_decay=0.0)
    lr_schedule = warmup_schedule(optimizer, recipe.warmup_steps)
    fit_denoiser(model, recipe, train_set, accelerator, optimizer, lr_schedule, "train ddpm", progress)
    return model


def ddpm_quality(model, recipe) -> dict:
    return {"sample_accuracy": sample_accuracy(model)}


register_recipe(RecipeKind("ddpm", DDPMRecipe, train_ddpm, ddpm_quality))
