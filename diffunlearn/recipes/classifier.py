"""Recipe of the embedded digits classifier (the judge of generation runs, the base of classifier unlearning)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..registry import RecipeKind, register_recipe
from ..config import check_choice, check_positive
from ..data import StepSampler, load_digits_splits
from ..data.outliers import KINDS as OUTLIER_KINDS
from ..data.outliers import mixed_outliers
from ..models.digits_classifier import DigitsClassifier
from ..training.fit import fit


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


def _shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to `max_shift` pixels (zero fill), per image: (B, C, H, W)."""
    if max_shift == 0:
        return images
    h, w = images.shape[-2:]
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator)
    return torch.stack([p[:, dy:dy + h, dx:dx + w] for p, (dy, dx) in zip(padded, offsets.tolist())])


def one_cycle_adamw(accelerator, model, params, lr: float, weight_decay: float, steps: int) -> tuple:
    """(model, optimizer, schedule) prepared by `accelerator`: AdamW over `params` with a one-cycle lr to `lr`."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    return accelerator.prepare(model, optimizer, schedule)


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
    total = recipe.epochs * -(-len(train_set) // recipe.batch_size)
    model, optimizer, lr_schedule = one_cycle_adamw(accelerator, model, model.parameters(), recipe.lr,
                                                    recipe.weight_decay, total)
    sampler = StepSampler(train_set, recipe.batch_size, recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    model.train()

    def loss_fn(step):
        idx = sampler.indices(step)
        images, labels = _shift(train_set.images[idx], recipe.max_shift, gen), train_set.labels[idx]
        if recipe.reject_class:
            count = round(recipe.outlier_fraction * len(idx))
            outliers = mixed_outliers(count, tuple(images.shape[-2:]), gen, train_set.images, recipe.outlier_kinds)
            images = torch.cat([images, outliers])
            labels = torch.cat([labels, torch.full((len(outliers),), num_classes, dtype=labels.dtype)])
        loss = torch.nn.functional.cross_entropy(model(images.to(accelerator.device)), labels.to(accelerator.device))
        return loss, None

    fit(accelerator, optimizer, lr_schedule, total, loss_fn, "train classifier", progress, shown=None)
    model = accelerator.unwrap_model(model)
    return model.eval()


def classifier_quality(model, recipe) -> dict:
    _, test = load_digits_splits(recipe.split_seed)
    return {"test_accuracy": classifier_accuracy(model, test.images, test.labels)}


register_recipe(RecipeKind("classifier", ClassifierRecipe, train_classifier, classifier_quality))
