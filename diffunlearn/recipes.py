"""Recipes that train the embedded base models from scratch (seeded, on accelerate).

They also serve as the retrain-from-scratch reference (RT): the same recipe on the remain set D_r.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .classifier import DigitsClassifier
from .config import check_choice, check_positive
from .data import StepSampler, load_digits_splits
from .data.outliers import KINDS as OUTLIER_KINDS, mixed_outliers
from .models.ddpm import ClassConditionalDDPM, ClassConditionalDDPMPipeline, tiny_unet_config


@dataclass
class DenoiserRecipe:
    """What every denoiser recipe (DDPM, DiT, text-to-image) has: the `fit_denoiser` loop's settings, the noise
    scheduler and the data split. A family's recipe adds its architecture and may change these defaults."""

    steps: int = 6000
    batch_size: int = 128
    lr: float = 2e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    cond_drop: float = 0.1
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = False  # x0 clipping in DDIM sampling breaks classifier-free guidance (eps is not re-derived)
    exclude_classes: List[int] = field(default_factory=list)  # RT: leave these classes out of the training data
    split_seed: int = 0
    seed: int = 0
    mixed_precision: str = "no"

    def start(self, train_set=None) -> tuple:
        """(Accelerator, training set) of a seeded run: `train_set`, or the digits train split, minus
        `exclude_classes`."""
        accelerator = Accelerator(mixed_precision=self.mixed_precision)
        set_seed(self.seed)
        if train_set is None:
            train_set, _ = load_digits_splits(self.split_seed)
        if self.exclude_classes:
            train_set = train_set.select_classes(self.exclude_classes, keep=False)
        return accelerator, train_set


@dataclass
class DDPMRecipe(DenoiserRecipe):
    channels: List[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1

    def __post_init__(self):
        check_positive("recipe", steps=self.steps, batch_size=self.batch_size, lr=self.lr)


@dataclass
class ClassifierRecipe:
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    channels: List[int] = field(default_factory=lambda: [32, 64, 128])
    max_shift: int = 1  # random translation augmentation, pixels
    reject_class: bool = True  # add a "not a digit" output trained on synthetic outliers (outlier exposure)
    outlier_fraction: float = 0.25  # outliers added to each batch, as a share of the batch size
    outlier_kinds: List[str] = field(default_factory=lambda: list(OUTLIER_KINDS))  # see data/outliers.py
    split_seed: int = 0
    seed: int = 0

    def __post_init__(self):
        check_positive("recipe", epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        for kind in self.outlier_kinds:
            check_choice("recipe", "outlier_kinds", kind, OUTLIER_KINDS)


def fit_denoiser(model, recipe, train_set, accelerator, optimizer, lr_schedule, desc: str,
                 progress: bool = True, encoder=None, encode=None) -> None:
    """Train `model.network` from scratch on its per-sample denoising loss with an EMA; leaves the EMA weights.

    Seeded per step (`recipe.seed`), antithetic timesteps, random draws made for the global batch and sliced per
    process. Shared by the DDPM, DiT and text-to-image recipes. Without an `encoder` the batch's class labels
    condition the network, dropped with probability `recipe.cond_drop`; with one (a text encoder trained jointly:
    its parameters are in `optimizer` and the EMA), `encode(prepared encoder, batch, step)` gives the conditioning.
    """
    modules = [model.network] + ([encoder] if encoder is not None else [])
    *prepared, optimizer, lr_schedule = accelerator.prepare(*modules, optimizer, lr_schedule)
    model.forward_module = prepared[0]
    params = [p for m in modules for p in m.parameters()]
    ema = EMAModel(params, decay=recipe.ema_decay)
    sampler = StepSampler(train_set, recipe.batch_size, recipe.seed, accelerator.process_index,
                          accelerator.num_processes)
    model.network.train()
    bar = tqdm(range(recipe.steps), disable=not (progress and accelerator.is_main_process), desc=desc)
    for step in bar:
        gen = torch.Generator(accelerator.device).manual_seed(recipe.seed * 7919 + step)
        batch = sampler.batch(step, accelerator.device)
        condition = {"cond_drop": recipe.cond_drop} if encoder is None else {"cond": encode(prepared[1], batch, step)}
        loss = model.training_losses(batch, generator=gen, antithetic=True, **condition,
                                     shard=(accelerator.process_index, accelerator.num_processes)).mean()
        accelerator.backward(loss)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(params)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    ema.copy_to(params)
    model.network.eval()
    model.forward_module = None


def train_ddpm(recipe: DDPMRecipe, train_set=None, progress: bool = True) -> ClassConditionalDDPM:
    """Train a class-conditional DDPM from scratch on the digits train split (minus `exclude_classes`)."""
    accelerator, train_set = recipe.start(train_set)
    unet = UNet2DModel(**tiny_unet_config(channels=recipe.channels, layers_per_block=recipe.layers_per_block))
    scheduler = DDPMScheduler(num_train_timesteps=recipe.num_train_timesteps, beta_schedule=recipe.beta_schedule,
                              prediction_type=recipe.prediction_type, clip_sample=recipe.clip_sample)
    model = ClassConditionalDDPM(ClassConditionalDDPMPipeline(unet=unet, scheduler=scheduler))
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / recipe.warmup_steps))
    fit_denoiser(model, recipe, train_set, accelerator, optimizer, lr_schedule, "train ddpm", progress)
    return model


def _shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to `max_shift` pixels (zero fill), per image: (B, C, H, W)."""
    if max_shift == 0:
        return images
    h, w = images.shape[-2:]
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator)
    return torch.stack([p[:, dy:dy + h, dx:dx + w] for p, (dy, dx) in zip(padded, offsets.tolist())])


def classifier_accuracy(classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> float:
    classifier.eval()
    with torch.inference_mode():
        preds = torch.cat([classifier(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    return (preds.cpu() == labels.cpu()).float().mean().item()


def train_classifier(recipe: ClassifierRecipe, train_set=None, progress: bool = True,
                     num_classes: Optional[int] = 10) -> DigitsClassifier:
    """Train the digits CNN with shift augmentation; returns it in eval mode."""
    accelerator = Accelerator()
    set_seed(recipe.seed)
    if train_set is None:
        train_set, _ = load_digits_splits(recipe.split_seed)
    model = DigitsClassifier(num_classes=num_classes, channels=tuple(recipe.channels),
                             reject_class=recipe.reject_class)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = -(-len(train_set) // recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=total)
    model, optimizer, lr_schedule = accelerator.prepare(model, optimizer, lr_schedule)
    sampler = StepSampler(train_set, recipe.batch_size, recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    model.train()
    for step in tqdm(range(total), disable=not (progress and accelerator.is_main_process), desc="train classifier"):
        idx = sampler.indices(step)
        images, labels = _shift(train_set.images[idx], recipe.max_shift, gen), train_set.labels[idx]
        if recipe.reject_class:
            count = round(recipe.outlier_fraction * len(idx))
            outliers = mixed_outliers(count, tuple(images.shape[-2:]), gen, train_set.images, recipe.outlier_kinds)
            images = torch.cat([images, outliers])
            labels = torch.cat([labels, torch.full((len(outliers),), num_classes, dtype=labels.dtype)])
        loss = torch.nn.functional.cross_entropy(model(images.to(accelerator.device)), labels.to(accelerator.device))
        accelerator.backward(loss)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model = accelerator.unwrap_model(model)
    return model.eval()


def sample_accuracy(model, classifier: str = "embedded:digits/classifier", per_class: int = 50) -> dict:
    """Share of samples per class (DDIM 25 steps, guidance 2) that the embedded classifier assigns to their class."""
    from .assets import resolve_model_path
    from .config import EvalConfig
    from .evaluation.metrics import classify, generate, labels_and_seeds, per_class_accuracy

    judge = DigitsClassifier.from_pretrained(resolve_model_path(classifier), use_safetensors=True).eval()
    labels, seeds = labels_and_seeds(range(model.num_classes), per_class, eval_seed=0)
    eval_cfg = EvalConfig(num_inference_steps=25, guidance_scale=2.0)
    accs = per_class_accuracy(classify(judge, generate(model, labels, seeds, eval_cfg)), labels)
    return {"protocol": f"{per_class} samples/class, ddim 25 steps, guidance 2.0, seeds 100000*c+j, judged by "
                        f"{classifier}", "mean": sum(accs.values()) / len(accs), "per_class": accs}


# kind -> (module, recipe class, train function, quality function); quality(model, recipe) -> dict of metrics
RECIPES = {
    "ddpm": ("diffunlearn.recipes", "DDPMRecipe", "train_ddpm", "ddpm_quality"),
    "classifier": ("diffunlearn.recipes", "ClassifierRecipe", "train_classifier", "classifier_quality"),
    "vae": ("diffunlearn.recipes_latent", "VAERecipe", "train_vae", "vae_quality"),
    "dit": ("diffunlearn.recipes_latent", "DiTRecipe", "train_dit", "dit_quality"),
    "sd": ("diffunlearn.recipes_t2i", "TextToImageRecipe", "train_text_to_image", "text_to_image_quality"),
}


def ddpm_quality(model, recipe) -> dict:
    return {"sample_accuracy": sample_accuracy(model)}


def classifier_quality(model, recipe) -> dict:
    _, test = load_digits_splits(recipe.split_seed)
    return {"test_accuracy": classifier_accuracy(model, test.images, test.labels)}


def recipe_functions(kind: str):
    """(recipe class, train function, quality function) of a recipe kind."""
    import importlib

    from .errors import choice_error

    if kind not in RECIPES:
        raise choice_error("recipe", kind, RECIPES)
    module_name, *names = RECIPES[kind]
    module = importlib.import_module(module_name)
    return tuple(getattr(module, name) for name in names)


def run_recipe(kind: str, config_path: str, output: str, overrides=(), embed_as: Optional[str] = None) -> dict:
    """Train one base model from a recipe YAML, save it to `output` and optionally ship it as an embedded model.

    Returns the manifest entry (recipe, seed, metrics).
    """
    from .config import parse_overrides, read_yaml, validate
    from omegaconf import OmegaConf

    recipe_cls, train, quality = recipe_functions(kind)
    given = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(read_yaml(config_path)),
                                                   parse_overrides(list(overrides))))
    recipe = validate(recipe_cls(), given)
    model = train(recipe)
    model.save_pretrained(output)
    return ship_recipe_output(output, recipe, config_path, quality(model, recipe), embed_as)


def ship_recipe_output(output, recipe, config_path: str, metrics: dict, embed_as: Optional[str] = None) -> dict:
    """The manifest entry of a saved base model (recipe, command, seed, metrics); with `embed_as`, also copy the
    folder into the package as embedded:NAME and record the entry."""
    import dataclasses
    import shutil
    import sys

    from .assets import ASSETS, record_in_manifest

    entry = {"recipe": {"command": " ".join(["python"] + sys.argv), "config": config_path,
                        **dataclasses.asdict(recipe)}, "seed": recipe.seed,
             "torch": torch.__version__, **metrics}
    if embed_as:
        target = ASSETS / embed_as
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(output, target)
        record_in_manifest(embed_as, entry)
    return entry
