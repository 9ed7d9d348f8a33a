"""Class-conditional DiT: a `DiTTransformer2DModel` on `AutoencoderKL` latents, saved as a stock `DiTPipeline`.

Conventions (those of diffusers' `DiTPipeline` and of `facebook/DiT-XL-2-256`):
- Real classes are 0..num_classes-1; the null class used for classifier-free guidance and condition dropout is 1000,
  which `DiTPipeline.__call__` hard-codes. It is the extra row of the label embedding of a transformer built with
  `num_embeds_ada_norm=1000`, so the wrapper refuses any other `num_embeds_ada_norm`: with fewer rows label 1000 does
  not exist, with more it is a real class, and in both cases the saved folder would guide wrongly in stock diffusers.
- Class names travel in `model_index.json` as `id2label` ({0: "zero", ...}), so `pipe.get_label_ids(["seven"])`
  works after a stock `DiTPipeline.from_pretrained(folder)`.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import DiTPipeline, DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding
from diffusers.utils.torch_utils import randn_tensor

from ..errors import UserError
from ..registry import register_family
from .base import DiffusionModel, class_guided_loop, sampling_scheduler
from .latent import LatentModelMixin

NULL_CLASS = 1000  # DiTPipeline's hard-coded unconditional label


def disable_label_dropout(transformer: torch.nn.Module) -> int:
    """Switch off the label dropout inside every `LabelEmbedding` of `transformer` (this instance only).

    Each DiT block's `CombinedTimestepLabelEmbeddings` replaces labels by the null class with probability
    `class_dropout_prob` (0.1) in train mode, drawing from the global RNG. That would make training unseeded, differ
    between processes and add to our own seeded `cond_drop`, so the wrapper owns condition dropout instead.

    Returns:
        The number of label embeddings changed.
    """
    count = 0
    for module in transformer.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0
            count += 1
    return count


def learns_sigma(transformer) -> bool:
    """True when the transformer also predicts the variance (out_channels = 2 * in_channels, like DiT-XL/2)."""
    return transformer.config.out_channels == 2 * transformer.config.in_channels


@register_family
class ClassConditionalDiT(LatentModelMixin, DiffusionModel):
    """Wrapper of a stock `DiTPipeline` (transformer + VAE + scheduler + id2label) for class unlearning.

    The network denoises scaled VAE latents (B, c, h, w); images (B, C, H, W) in [-1, 1] are encoded with the
    VAE's posterior mean (`LatentModelMixin`). Learned-variance models (out_channels = 2 * in_channels) are trained
    on the noise half only: `predict` returns the first `in_channels` channels, so every loss (remain, forget,
    saliency) is the epsilon MSE and the variance half is left as it is. The variance head gets no gradient (it is
    only used by samplers with a learned variance; ours use the fixed schedule variance), which is the
    "simple" loss of DiT without the VLB term: unlearning changes what is generated, not the step sizes.

    Raises:
        UserError: the transformer's `num_embeds_ada_norm` is not 1000 (see the module docstring).
    """

    family, conditioning, pipeline_class = "dit", "class", DiTPipeline
    presets = {"embedded": "digits/dit_sfron.yaml", "checkpoint": "imagenet/dit_xl2_sfron.yaml"}
    load_hint = ("stock diffusers: `pipe = DiTPipeline.from_pretrained(folder); "
                 "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config); "
                 "pipe(class_labels=pipe.get_label_ids([\"seven\"]), guidance_scale=2.0, num_inference_steps=25)` "
                 "(the stock pipeline guides only when guidance_scale > 1)")

    def __init__(self, pipeline):
        transformer = pipeline.transformer
        if transformer.config.num_embeds_ada_norm != NULL_CLASS:
            raise UserError(f"DiT transformer has num_embeds_ada_norm={transformer.config.num_embeds_ada_norm}; "
                            f"valid: {NULL_CLASS} (DiTPipeline's null class is label {NULL_CLASS})")
        super().__init__(pipeline)
        disable_label_dropout(transformer)
        if pipeline.labels and "id2label" not in pipeline.config:
            # a loaded pipeline keeps labels but not its config entry: register it again so saving keeps the names
            names = {}
            for name, index in pipeline.labels.items():
                names.setdefault(index, []).append(name)
            pipeline.register_to_config(id2label={i: ", ".join(n) for i, n in sorted(names.items())})

    @property
    def network(self) -> torch.nn.Module:
        return self.pipeline.transformer

    @property
    def num_classes(self) -> int:
        """Number of entries of id2label, else `num_embeds_ada_norm` (all ImageNet classes)."""
        if self.pipeline.labels:
            return len(set(self.pipeline.labels.values()))
        return self.network.config.num_embeds_ada_norm

    def condition(self, batch):
        return batch["labels"].to(self.device)

    def null_condition(self, cond):
        return torch.full_like(cond, NULL_CLASS)

    def drop_condition(self, cond, keep):
        return torch.where(keep, cond, self.null_condition(cond))

    def predict(self, x_t, t, cond):
        """Noise prediction (B, c, h, w) for latents x_t: (B, c, h, w), t: (B,), cond: (B,) class ids.

        For learned-variance transformers only the noise half of the output is returned (see the class docstring).
        """
        module = self.module
        out = module(x_t, timestep=t, class_labels=cond).sample
        return out[:, :x_t.shape[1]] if learns_sigma(self.network) else out

    @torch.no_grad()
    def sample(self, labels, generator, num_inference_steps, guidance_scale, sampler="ddim"):
        """Images (B, C, H, W) in [0, 1] for class ids `labels` (B,).

        A short loop rather than `DiTPipeline.__call__`: the stock call guides only when guidance_scale > 1 (so
        scale 0 would not be unconditional) and does not pass `generator` to the scheduler step (a DDPM sampler
        would draw from the global RNG, so images would not depend on their own generator only). With per-image
        generators, image i depends only on generator i, whatever the batch.

        Args:
            labels: (B,) class ids in [0, num_classes).
            generator: a torch.Generator or a list of B of them.
            num_inference_steps: denoising steps.
            guidance_scale: `uncond + s * (cond - uncond)`; 0 = unconditional, 1 = conditional.
            sampler: "ddim" or "ddpm", on the model's training noise schedule (fixed variance).
        """
        config = dict(self.pipeline.scheduler.config)
        if str(config.get("variance_type", "")).startswith("learned"):
            config["variance_type"] = "fixed_small"  # the variance half is not used (predict returns eps only)
        scheduler = sampling_scheduler(config, sampler)
        labels = torch.as_tensor(labels, device=self.device).long().reshape(-1)
        if labels.numel() == 0 or labels.min() < 0 or labels.max() >= self.num_classes:
            raise UserError(f"class labels {labels.tolist()} out of range; valid: 0..{self.num_classes - 1}")
        cfg, net = self.network.config, self.network
        latents = randn_tensor((len(labels), cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=generator,
                               device=self.device, dtype=net.dtype)
        null = self.null_condition(labels)
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        scheduler.set_timesteps(num_inference_steps)

        def predict_eps(x, t, y):  # the learned-variance half of DiT's output is not used
            return net(x, timestep=t.expand(len(y)).to(self.device), class_labels=y).sample[:, :cfg.in_channels]

        latents = class_guided_loop(scheduler, latents, predict_eps, labels, null, guidance_scale, step_kwargs)
        return self.decode(latents)


def tiny_dit_config(hidden: int = 128, num_layers: int = 4, patch_size: int = 1, heads: int = 4,
                    latent_channels: int = 4, sample_size: int = 4, learn_sigma: bool = False) -> dict:
    """Config of a small `DiTTransformer2DModel` on (latent_channels, sample_size, sample_size) latents.

    `num_embeds_ada_norm` stays 1000 (rows 0..999 for classes, row 1000 the null class; unused rows get no gradient).
    """
    if hidden % heads:
        raise UserError(f"DiT hidden size {hidden} is not a multiple of heads {heads}")
    return dict(num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=latent_channels,
                out_channels=latent_channels * (2 if learn_sigma else 1), num_layers=num_layers,
                sample_size=sample_size, patch_size=patch_size, num_embeds_ada_norm=NULL_CLASS)


def build_dit_pipeline(transformer: DiTTransformer2DModel, vae, scheduler, class_names) -> DiTPipeline:
    """A `DiTPipeline` whose `id2label` ({0: class_names[0], ...}) is saved in `model_index.json`."""
    id2label = {i: name for i, name in enumerate(class_names)}
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=id2label)
    pipe.register_to_config(id2label=id2label)
    return pipe
