"""Recipes for the embedded latent-space digits models: the tiny VAE and the class-conditional DiT on its latents.

Both are seeded and run on accelerate like `recipes.train_ddpm`; `train_dit` with `exclude_classes` is the
retrain-from-scratch reference (RT) of DiT class forgetting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel

from ..registry import RecipeKind, register_recipe
from ..config import check_positive
from ..data import StepSampler, load_digits_splits
from ..data.digits import DIGIT_NAMES
from ..errors import UserError
from ..models.dit import ClassConditionalDiT, build_dit_pipeline, tiny_dit_config
from ..models.latent import decode_latents, encode_latents, tiny_vae_config
from ..training.fit import fit, warmup_schedule
from .classifier import classifier_accuracy
from .denoiser import DenoiserRecipe, fit_denoiser, sample_accuracy


@dataclass
class VAERecipe:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    kl_weight: float = 1e-3  # weight of the KL term against the per-image squared error summed over pixels
    latent_channels: int = 4
    channels: List[int] = field(default_factory=lambda: [32, 64])  # one 2x downsampling per extra entry
    split_seed: int = 0
    seed: int = 0

    def __post_init__(self):
        check_positive("recipe", steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                       warmup_steps=self.warmup_steps, latent_channels=self.latent_channels)
        if self.kl_weight < 0:
            raise UserError(f"recipe.kl_weight must be >= 0, got {self.kl_weight!r}")


@dataclass
class DiTRecipe(DenoiserRecipe):
    """The embedded digits DiT: a `DiTTransformer2DModel` (`tiny_dit_config`) trained on a frozen VAE's latents."""

    lr: float = 3e-4
    hidden: int = 128
    """Transformer width; `heads`, `num_layers` and `patch_size` complete `tiny_dit_config`, and `vae` is the frozen
    VAE whose scaled latents the transformer models."""
    heads: int = 4
    num_layers: int = 6
    patch_size: int = 2
    vae: str = "embedded:digits/vae"

    def __post_init__(self):
        check_positive("recipe", steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                       warmup_steps=self.warmup_steps, hidden=self.hidden, heads=self.heads,
                       num_layers=self.num_layers, patch_size=self.patch_size)


class VAELoss(torch.nn.Module):
    """Per-image VAE loss (B,) of images x: (B, C, H, W) in [-1, 1]; a module so accelerate can wrap it (DDP)."""

    def __init__(self, vae: AutoencoderKL, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple:
        """(loss, reconstruction error), both (B,): squared error summed over pixels (+ kl_weight x KL)."""
        posterior = self.vae.encode(x).latent_dist
        rec = (self.vae.decode(posterior.sample(generator)).sample - x).pow(2).flatten(1).sum(1)
        return rec + self.kl_weight * posterior.kl(), rec


@torch.no_grad()
def latent_std(vae, images: torch.Tensor, batch_size: int = 512) -> float:
    """Standard deviation of the unscaled posterior means of images (N, C, H, W) in [-1, 1]."""
    means = torch.cat([vae.encode(images[i:i + batch_size].to(vae.device)).latent_dist.mean
                       for i in range(0, len(images), batch_size)])
    return means.float().std().item()


def train_vae(recipe: VAERecipe, train_set=None, progress: bool = True) -> AutoencoderKL:
    """Train the digits `AutoencoderKL` (8x8 images -> latent_channels x 4 x 4 latents), returned in eval mode.

    Loss per image: squared error of the reconstruction (from a posterior sample) summed over pixels, plus
    `kl_weight` x KL(posterior || N(0, I)); learning rate: linear warmup, then cosine decay to 0. `scaling_factor`
    is set to 1 / std of the training latents, so scaled latents have unit variance as the diffusion models expect.
    """
    accelerator = Accelerator()
    set_seed(recipe.seed)
    if train_set is None:
        train_set, _ = load_digits_splits(recipe.split_seed)
    vae = AutoencoderKL(**tiny_vae_config(latent_channels=recipe.latent_channels, channels=tuple(recipe.channels)))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.lr, weight_decay=0.0)
    lr_schedule = warmup_schedule(optimizer, recipe.warmup_steps, cosine_steps=recipe.steps)
    module, optimizer, lr_schedule = accelerator.prepare(VAELoss(vae, recipe.kl_weight), optimizer, lr_schedule)
    sampler = StepSampler(train_set, recipe.batch_size, recipe.seed, accelerator.process_index,
                          accelerator.num_processes)

    def loss_fn(step):
        gen = torch.Generator(accelerator.device).manual_seed(recipe.seed * 7919 + step)
        losses, rec = module(sampler.batch(step, accelerator.device)["pixel_values"], gen)
        return losses.mean(), rec.mean()

    fit(accelerator, optimizer, lr_schedule, recipe.steps, loss_fn, "train vae", progress, shown="rec")
    vae = accelerator.unwrap_model(module).vae.eval()
    vae.register_to_config(scaling_factor=1.0 / latent_std(vae, train_set.images * 2 - 1))
    return vae


@torch.no_grad()
def vae_quality(model: AutoencoderKL, recipe: VAERecipe, classifier: str = "embedded:digits/classifier") -> dict:
    """Test-split reconstruction MSE (pixels in [0, 1]) and the judge classifier's accuracy on reconstructions."""
    from ..assets import resolve_model_path
    from ..models.digits_classifier import DigitsClassifier

    _, test = load_digits_splits(recipe.split_seed)
    model.eval()
    latents = encode_latents(model, test.images * 2 - 1)
    reconstructions = decode_latents(model, latents).cpu()
    judge = DigitsClassifier.from_pretrained(resolve_model_path(classifier), use_safetensors=True).eval()
    return {"test_reconstruction_mse": (reconstructions - test.images).pow(2).mean().item(),
            "test_scaled_latent_std": latents.std().item(), "test_scaled_latent_mean": latents.mean().item(),
            "classifier_accuracy_real": classifier_accuracy(judge, test.images, test.labels),
            "classifier_accuracy_reconstructed": classifier_accuracy(judge, reconstructions, test.labels),
            "scaling_factor": model.config.scaling_factor}


def train_dit(recipe: DiTRecipe, train_set=None, progress: bool = True) -> ClassConditionalDiT:
    """Train a class-conditional DiT from scratch on the VAE latents of the digits train split.

    The VAE (`recipe.vae`) is frozen; condition dropout (`cond_drop`, for classifier-free guidance) is the
    wrapper's seeded one, the transformer's own label dropout being disabled. Returns the EMA weights.
    """
    from ..assets import resolve_model_path

    accelerator, train_set = recipe.start(train_set)
    vae = AutoencoderKL.from_pretrained(resolve_model_path(recipe.vae), use_safetensors=True).eval()
    vae.requires_grad_(False)
    transformer = DiTTransformer2DModel(**tiny_dit_config(
        hidden=recipe.hidden, heads=recipe.heads, num_layers=recipe.num_layers, patch_size=recipe.patch_size,
        latent_channels=vae.config.latent_channels,
        sample_size=vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)))
    scheduler = DDPMScheduler(num_train_timesteps=recipe.num_train_timesteps, beta_schedule=recipe.beta_schedule,
                              prediction_type=recipe.prediction_type, clip_sample=recipe.clip_sample)
    model = ClassConditionalDiT(build_dit_pipeline(transformer, vae, scheduler, DIGIT_NAMES))
    model.to(accelerator.device)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=recipe.lr, weight_decay=0.0)
    lr_schedule = warmup_schedule(optimizer, recipe.warmup_steps)
    fit_denoiser(model, recipe, train_set, accelerator, optimizer, lr_schedule, "train dit", progress)
    return model


def dit_quality(model: ClassConditionalDiT, recipe: DiTRecipe) -> dict:
    return {"sample_accuracy": sample_accuracy(model)}


register_recipe(RecipeKind("vae", VAERecipe, train_vae, vae_quality))
register_recipe(RecipeKind("dit", DiTRecipe, train_dit, dit_quality))
