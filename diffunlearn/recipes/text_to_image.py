"""Recipe of the embedded text-to-image model (`embedded:digits/sd`): a tiny Stable Diffusion trained from scratch
on captioned digits, in the latent space of the embedded digits VAE.

Captions name the digit through a few templates ("a handwritten digit seven", "a drawing of the number seven"...);
a share of them is the generic "a handwritten digit" (any digit, so that it can serve as an anchor prompt) and a
share is "" (caption dropout, which teaches the unconditional prediction classifier-free guidance needs). The text
encoder is trained jointly with the UNet here and is frozen afterwards (unlearning never changes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from ..registry import RecipeKind, register_recipe
from ..config import check_positive
from ..data.digits import DIGIT_NAMES
from ..errors import UserError
from ..models.latent import tiny_vae_config
from ..models.sd import StableDiffusion, tiny_sd_unet_config
from ..models.text import build_tokenizer, tiny_text_encoder
from .denoiser import DenoiserRecipe, fit_denoiser

CAPTION_TEMPLATES = ("a handwritten digit {}", "a drawing of the number {}", "the digit {} written by hand",
                     "handwritten {}")
GENERIC_CAPTION = "a handwritten digit"  # true of every digit: the natural anchor of concept forgetting


def digit_prompt(digit: int, template: int = 0) -> str:
    """The caption of `digit` in template `template` (0: "a handwritten digit seven")."""
    return CAPTION_TEMPLATES[template].format(DIGIT_NAMES[digit])


def caption_vocabulary() -> List[str]:
    """Every word of every caption (the tokenizer's vocabulary)."""
    words = {w for t in CAPTION_TEMPLATES for w in t.split() if w != "{}"}
    return sorted(words | set(GENERIC_CAPTION.split()) | set(DIGIT_NAMES))


@dataclass
class TextToImageRecipe(DenoiserRecipe):
    lr: float = 5e-4
    cond_drop: float = 0.1  # share of captions replaced by "" (classifier-free guidance)
    generic_prob: float = 0.15  # share of captions replaced by GENERIC_CAPTION
    vae: str = "embedded:digits/vae"  # a VAE folder / embedded:NAME, or "random" (an untrained tiny VAE: tests only)
    channels: List[int] = field(default_factory=lambda: [64, 128])
    layers_per_block: int = 1
    heads: int = 4
    norm_num_groups: int = 16
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 16  # tokens per prompt (= the text encoder's max_position_embeddings)
    quality_samples: int = 50  # samples per prompt judged by text_to_image_quality

    def __post_init__(self):
        check_positive("recipe", steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                       warmup_steps=self.warmup_steps, max_length=self.max_length,
                       quality_samples=self.quality_samples)
        if not (0 <= self.cond_drop < 1 and 0 <= self.generic_prob < 1 and self.cond_drop + self.generic_prob < 1):
            raise UserError(f"recipe.cond_drop {self.cond_drop} and recipe.generic_prob {self.generic_prob} must be "
                            "in [0, 1) and sum to less than 1")


def build_text_to_image(recipe: TextToImageRecipe) -> StableDiffusion:
    """A randomly initialised SD (UNet, text encoder, tokenizer) on the recipe's VAE."""
    from ..assets import resolve_model_path

    if recipe.vae == "random":
        vae = AutoencoderKL(**tiny_vae_config())
    else:
        vae = AutoencoderKL.from_pretrained(resolve_model_path(recipe.vae), use_safetensors=True)
    tokenizer = build_tokenizer(caption_vocabulary(), model_max_length=recipe.max_length)
    text_encoder = tiny_text_encoder(tokenizer, hidden_size=recipe.text_hidden_size, num_layers=recipe.text_layers,
                                     num_heads=recipe.text_heads, intermediate_size=2 * recipe.text_hidden_size)
    latent_size = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
    unet = UNet2DConditionModel(**tiny_sd_unet_config(
        sample_size=latent_size, in_channels=vae.config.latent_channels, channels=recipe.channels,
        layers_per_block=recipe.layers_per_block, cross_attention_dim=recipe.text_hidden_size, heads=recipe.heads,
        norm_num_groups=recipe.norm_num_groups))
    scheduler = DDPMScheduler(num_train_timesteps=recipe.num_train_timesteps, beta_schedule=recipe.beta_schedule,
                              prediction_type=recipe.prediction_type, clip_sample=recipe.clip_sample, steps_offset=1)
    return StableDiffusion(StableDiffusionPipeline(
        vae=vae.eval().requires_grad_(False), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False))


def caption_table(model: StableDiffusion) -> tuple:
    """Token ids of every caption: (digit captions (10, T, L), generic caption (L,), empty caption (L,))."""
    digits = model.tokenize([digit_prompt(d, k) for d in range(len(DIGIT_NAMES))
                             for k in range(len(CAPTION_TEMPLATES))])
    generic, empty = model.tokenize([GENERIC_CAPTION, ""])
    return digits.view(len(DIGIT_NAMES), len(CAPTION_TEMPLATES), -1), generic, empty


def sample_captions(table: tuple, labels: torch.Tensor, recipe: TextToImageRecipe, generator) -> torch.Tensor:
    """Token ids (B, L) of a random caption for each label (B,): a digit template, the generic caption or ""."""
    digits, generic, empty = table
    u = torch.rand(len(labels), generator=generator)
    template = torch.randint(0, digits.shape[1], (len(labels),), generator=generator)
    ids = digits[labels.cpu(), template]
    ids[u < recipe.generic_prob + recipe.cond_drop] = generic
    ids[u < recipe.cond_drop] = empty
    return ids


def warmup_cosine(step: int, recipe: TextToImageRecipe) -> float:
    """Learning-rate factor: linear warmup over `warmup_steps`, then cosine decay to 0 at `steps`.

    The same schedule as `training.fit.warmup_schedule(..., cosine_steps=steps)` up to float rounding (pi x (step -
    warmup) / span here, pi x ((step - warmup) / span) there): kept so the shipped SD model's recipe run stays
    bit-identical; move it onto `warmup_schedule` when that model is next retrained."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)))


class PromptEncoder(torch.nn.Module):
    """The text encoders as one module whose forward is the family's conditioning (so accelerate can wrap it)."""

    def __init__(self, model):
        super().__init__()
        self.encoders = torch.nn.ModuleList(model.text_encoders())
        self._model = [model]  # not a submodule

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._model[0]._encode(input_ids)


def train_joint(build, recipe, train_set=None, desc: str = "train", progress: bool = True):
    """Train a text-to-image model, `build(recipe)` once the run is seeded (the denoiser and its text encoders
    jointly, AdamW with warmup and cosine decay, EMA) on captioned digits with its family's loss; returns it
    with the EMA weights, text encoders frozen. Shared by the SD, SDXL and SD3 recipes."""
    accelerator, train_set = recipe.start(train_set)
    model = build(recipe).to(accelerator.device)
    encoder = PromptEncoder(model)
    table = caption_table(model)
    optimizer = torch.optim.AdamW(list(model.network.parameters()) + list(encoder.parameters()), lr=recipe.lr,
                                  weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, recipe))

    def encode(prepared, batch, step):  # a random caption per image; with gradient: the encoders learn too
        caption_gen = torch.Generator().manual_seed(recipe.seed * 104729 + step)
        return prepared(sample_captions(table, batch["labels"], recipe, caption_gen).to(accelerator.device))

    fit_denoiser(model, recipe, train_set, accelerator, optimizer, lr_schedule, desc, progress, encoder=encoder,
                 encode=encode)
    for text_encoder in model.text_encoders():
        text_encoder.eval().requires_grad_(False)
    return model


def train_text_to_image(recipe: TextToImageRecipe, train_set=None, progress: bool = True) -> StableDiffusion:
    """Train the tiny SD (UNet and text encoder jointly, `train_joint`)."""
    return train_joint(build_text_to_image, recipe, train_set, "train sd", progress)


def text_to_image_quality(model, recipe: TextToImageRecipe,
                          classifier: str = "embedded:digits/classifier") -> dict:
    """Per prompt, the share of samples the embedded digits classifier recognises as the digit the prompt asks for.

    Prompts: "a handwritten digit <name>" for every digit; 25 steps of the family's sampler, guidance 2.0, image j
    of digit c from seed 100000 * c + j. Also the share of samples of GENERIC_CAPTION recognised as some digit (any
    of 0-9).
    """
    from ..assets import resolve_model_path
    from ..config import EvalConfig
    from ..data.generated import generate, labels_and_seeds
    from ..evaluation.metrics import classify
    from ..models.digits_classifier import DigitsClassifier

    judge = DigitsClassifier.from_pretrained(resolve_model_path(classifier), use_safetensors=True).eval()
    n, digits = recipe.quality_samples, range(len(DIGIT_NAMES))
    eval_cfg = EvalConfig(num_inference_steps=25, guidance_scale=2.0, batch_size=500, sampler=model.default_sampler)
    labels, seeds = labels_and_seeds(digits, n, eval_seed=0)
    prompts = [digit_prompt(d) for d in digits]
    preds = classify(judge, generate(model, model.tokenize(prompts)[labels], seeds, eval_cfg))
    per_prompt = {p: (preds[labels == d] == d).float().mean().item() for d, p in zip(digits, prompts)}
    generic_seeds = [10 * 100_000 + j for j in range(n)]
    generic = classify(judge, generate(model, model.tokenize([GENERIC_CAPTION] * n), generic_seeds, eval_cfg))
    return {"prompt_accuracy": {
        "protocol": f"{n} samples/prompt, {eval_cfg.sampler} 25 steps, guidance 2.0, seeds 100000*digit+j, judged by "
                    f"{classifier}",
        "min": min(per_prompt.values()), "mean": sum(per_prompt.values()) / len(per_prompt),
        "per_prompt": per_prompt,
        "generic_prompt_is_digit": (generic < len(DIGIT_NAMES)).float().mean().item(),
        "generic_prompt_digit_counts": torch.bincount(generic, minlength=len(DIGIT_NAMES) + 1).tolist()}}


register_recipe(RecipeKind("sd", TextToImageRecipe, train_text_to_image, text_to_image_quality))
