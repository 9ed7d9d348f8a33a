"""SA, Selective Amnesia: EWC to the base weights + generative replay of retained classes + a surrogate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import MethodConfig, check_positive
from ..data import LabeledImages, StepSampler
from ..data.sets import remain_classes
from ..errors import UserError
from ..registry import register_method
from ..training.latent_cache import without_latents
from ..training.streams import Stream
from .base import UnlearningMethod
from .saliency import mean_squared_gradient


@dataclass
class SAConfig(MethodConfig):
    name: str = "sa"
    ewc_lambda: float = 10.0  # weight of sum_i F_i (theta_i - theta*_i)^2 (SA's DDPM config: lmbda 10)
    replay_samples: int = 512  # images of retained classes generated once by the base model
    replay_steps: int = 25  # DDIM steps for the replay images
    replay_guidance: float = 2.0
    fisher_samples: int = 64  # replay images whose per-sample gradients make the Fisher diagonal of the base model
    fisher_timesteps: Optional[int] = None  # per-sample loss summed over all timesteps (None, as SA) or over this
                                            # many stratified ones, scaled to the sum over all (cheaper, noisier)
    replay_weight: float = 1.0
    clip: Optional[float] = 1.0

    def __post_init__(self):
        check_positive("method", replay_samples=self.replay_samples, replay_steps=self.replay_steps,
                       fisher_samples=self.fisher_samples, fisher_timesteps=self.fisher_timesteps or 1)
        if self.fisher_samples > self.replay_samples:
            raise UserError(f"method.fisher_samples {self.fisher_samples} exceeds method.replay_samples "
                            f"{self.replay_samples}; the Fisher is taken on replay images")


def timestep_sum_fisher(context, samples: dict, timesteps: Optional[int], stream: int) -> dict:
    """SA's Fisher diagonal: the mean over samples x of (grad of sum_t l(x, t))^2, the per-sample loss summed over
    the diffusion timesteps (all T, or `timesteps` stratified ones scaled by T / timesteps), one noise draw per t.

    Every process takes the same samples in the same order, so the gradient averaged over processes is still one
    sample's."""
    model = context.model
    total = model.noise_scheduler.config.num_train_timesteps
    count = min(timesteps or total, total)
    stride = total // count

    def sample_loss(i: int) -> torch.Tensor:
        generator = context.generator(i, stream)
        offset = torch.randint(0, stride, (1,), generator=generator, device=generator.device)
        t = torch.arange(count, device=generator.device) * stride + offset
        batch = {k: v[i:i + 1].expand(count, *v.shape[1:]) for k, v in samples.items()}
        return model.training_losses(batch, generator=generator, timesteps=t).sum() * (total / count)

    return mean_squared_gradient(context, (sample_loss(i) for i in range(len(samples["labels"]))))


@register_method
class SelectiveAmnesia(UnlearningMethod):
    """Selective Amnesia (Heng & Soh, "Selective Amnesia: A Continual Learning Approach to Forgetting in Deep
    Generative Models", NeurIPS 2023), for class-conditional models.

    Setup: generate a replay set of retained classes with the base model; Fisher diagonal F of the base model on
    it, from per-sample gradients of the loss summed over the timesteps as SA computes it; keep theta*. Step:
    surrogate loss (the forgotten class's condition learns uniform noise images, the surrogate distribution) +
    replay loss on generated retained images + ewc_lambda * sum F (theta - theta*)^2.
    """

    name = "sa"
    config_cls = SAConfig
    supports_fsdp = False  # the replay set is sampled under inference_mode, which FSDP2 cannot backprop through

    def setup(self):
        context, cfg = self.context, self.cfg
        retained = remain_classes(context.cfg, self.model)  # data.remain_classes, or every class not forgotten
        labels = torch.tensor(retained, device=context.device).repeat(
            -(-cfg.replay_samples // len(retained)))[:cfg.replay_samples]
        gens = [torch.Generator(context.device).manual_seed(context.cfg.seed * 100_003 + i)
                for i in range(len(labels))]
        self.model.network.eval()
        with torch.inference_mode():
            images = self.model.sample(labels, generator=gens, num_inference_steps=cfg.replay_steps,
                                       guidance_scale=cfg.replay_guidance)
        self.model.network.train()
        replay = LabeledImages(images.clone().cpu(), labels.clone().cpu())
        self.replay = StepSampler(replay, context.train_cfg.batch_size, context.cfg.seed + 3,
                                  context.process_index, context.num_processes)
        first = {k: v.to(context.device) for k, v in replay[:cfg.fisher_samples].items()}
        self.fisher = timestep_sum_fisher(context, first, cfg.fisher_timesteps, stream=Stream.SA_FISHER)
        self.anchor = {name: p.detach().clone() for name, p in context.params}
        return {"replay_images": len(replay)}

    def ewc_penalty(self) -> torch.Tensor:
        return sum((self.fisher[n] * (p - self.anchor[n]).pow(2)).sum() for n, p in self.context.params)

    def training_step(self, step: int) -> dict:
        context, cfg = self.context, self.cfg
        forget_batch = context.forget_batch(step)
        noise_images = torch.rand(forget_batch["pixel_values"].shape, generator=context.generator(step, Stream.SA_NOISE),
                                  device=context.device) * 2 - 1
        noisy = {**without_latents(forget_batch), "pixel_values": noise_images}  # its pixels, not D_f's latents
        surrogate = context.losses(noisy, step, stream=Stream.FORGET).mean()
        replay = context.losses(self.replay.batch(step, context.device), step, stream=Stream.REMAIN).mean()
        ewc = self.ewc_penalty()
        context.update(surrogate + cfg.replay_weight * replay + cfg.ewc_lambda * ewc, clip=cfg.clip)
        return {"surrogate_loss": surrogate.detach(), "replay_loss": replay.detach(), "ewc": ewc.detach()}
