"""Class-conditional DDPM: a `UNet2DModel` with a class embedding, its pipeline and its wrapper.

diffusers' `DDPMPipeline` has no class labels or guidance, so `ClassConditionalDDPMPipeline` adds both. Convention:
the UNet has `num_class_embeds = num_classes + 1` and the last embedding is the null class used for
classifier-free guidance and condition dropout.
"""

from __future__ import annotations

import inspect
from typing import List, Optional, Union

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from ..errors import UserError
from ..registry import register_family
from .base import DiffusionModel, class_guided_loop, sampling_scheduler

OUTPUT_TYPES = ("pil", "np", "pt")


class ClassConditionalDDPMPipeline(DiffusionPipeline):
    """Sampling from a class-conditional `UNet2DModel` with optional classifier-free guidance.

    Args:
        unet: a `UNet2DModel` with `num_class_embeds` = number of classes + 1 (the last one is the null class).
        scheduler: any diffusers scheduler with `set_timesteps` / `step` (DDPM, DDIM, ...).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @property
    def null_class_label(self) -> int:
        return self.unet.config.num_class_embeds - 1

    def _step_kwargs(self, generator, eta: float) -> dict:
        params = inspect.signature(self.scheduler.step).parameters
        kwargs = {"generator": generator} if "generator" in params else {}
        if "eta" in params:
            kwargs["eta"] = eta
        return kwargs

    @torch.no_grad()
    def __call__(self, class_labels: Union[int, List[int], torch.Tensor], guidance_scale: float = 1.0,
                 num_inference_steps: int = 50,
                 generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None, eta: float = 0.0,
                 output_type: str = "pil", return_dict: bool = True):
        """Generate one image per class label.

        Args:
            class_labels: class ids in [0, num_classes).
            guidance_scale: classifier-free guidance; 0 = unconditional, 1 = conditional, > 1 = guided.
            num_inference_steps: denoising steps of the scheduler.
            generator: a generator, or one per image (then image i depends only on generator i).
            eta: DDIM noise (ignored by schedulers without it).
            output_type: "pil", "np" (B, H, W, C) or "pt" (B, C, H, W), values in [0, 1].
            return_dict: return an `ImagePipelineOutput` rather than a tuple.
        """
        if output_type not in OUTPUT_TYPES:
            raise UserError(f"unknown output_type {output_type!r}; valid: {', '.join(OUTPUT_TYPES)}")
        labels = torch.as_tensor(class_labels, device=self._execution_device).long().reshape(-1)
        if labels.numel() == 0 or labels.min() < 0 or labels.max() >= self.null_class_label:
            raise UserError(f"class_labels {labels.tolist()} out of range; valid: 0..{self.null_class_label - 1}")
        cfg = self.unet.config
        shape = (len(labels), cfg.in_channels, cfg.sample_size, cfg.sample_size)
        image = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        null = torch.full_like(labels, self.null_class_label)
        self.scheduler.set_timesteps(num_inference_steps)
        image = class_guided_loop(self.scheduler, image, lambda x, t, y: self.unet(x, t, class_labels=y).sample,
                                  labels, null, guidance_scale, self._step_kwargs(generator, eta),
                                  self.progress_bar(self.scheduler.timesteps))
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)


@register_family
class ClassConditionalDDPM(DiffusionModel):
    """Wrapper of `ClassConditionalDDPMPipeline` for unlearning (pixel space, class labels)."""

    family, conditioning, pipeline_class = "ddpm", "class", ClassConditionalDDPMPipeline
    presets = {"embedded": "digits/ddpm_sfron.yaml", "checkpoint": "digits/ddpm_sfron.yaml"}
    load_hint = ("`from diffunlearn.models.ddpm import ClassConditionalDDPMPipeline; "
                 "ClassConditionalDDPMPipeline.from_pretrained(folder)`, or the UNet alone with stock diffusers: "
                 "`UNet2DModel.from_pretrained(folder, subfolder=\"unet\")`")

    @property
    def network(self) -> torch.nn.Module:
        return self.pipeline.unet

    @property
    def num_classes(self) -> int:
        return self.pipeline.null_class_label

    def condition(self, batch):
        return batch["labels"].to(self.device)

    def null_condition(self, cond):
        return torch.full_like(cond, self.pipeline.null_class_label)

    def drop_condition(self, cond, keep):
        return torch.where(keep, cond, self.null_condition(cond))

    def predict(self, x_t, t, cond):
        module = self.module
        return module(x_t, t, class_labels=cond).sample

    def sample(self, labels, generator, num_inference_steps, guidance_scale, sampler="ddim"):
        pipe = ClassConditionalDDPMPipeline(self.network, sampling_scheduler(self.pipeline.scheduler.config, sampler))
        pipe.set_progress_bar_config(disable=True)
        return pipe(labels, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                    generator=generator, output_type="pt").images


def tiny_unet_config(sample_size: int = 8, num_classes: int = 10, channels=(32, 64, 64), layers_per_block=1,
                     norm_num_groups: int = 8) -> dict:
    """Config of a small class-conditional `UNet2DModel` (the embedded digits model and the tests use it)."""
    down = ("DownBlock2D",) * len(channels)
    return dict(sample_size=sample_size, in_channels=1, out_channels=1, block_out_channels=tuple(channels),
                layers_per_block=layers_per_block, down_block_types=down,
                up_block_types=tuple(b.replace("Down", "Up") for b in down), num_class_embeds=num_classes + 1,
                norm_num_groups=norm_num_groups)

