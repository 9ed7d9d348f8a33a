"""Recipe of the embedded digits vision transformer and of its prompt-tuned sibling (Fast-NTK on visual prompts).

Stage 1 (`train_vit`): a small transformers `ViTForImageClassification` (8 x 8 digits, 2 x 2 patches) trained on the
digits' training split with AdamW, one-cycle lr and shift augmentation, like the digits CNN. Stage 2 (`prompt_tune`):
the stage-1 backbone frozen, VPT prompt tokens added (`add_visual_prompts`) and a new classifier head (a seeded
normal init with the ViT's std: a zero head would make the logits' Jacobian in the prompts vanish at w0) trained
with them on a labelled set: the model Fast-NTK's `prompt` / `prompt+head` subsets unlearn,
and, on D_r from the same backbone, its retrain reference RT. The prompts' and the head's initial values (w0, what
the tuning started from) are saved beside it (`prompt_init.safetensors`) for the Fast-NTK linearisation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from ..config import check_positive
from ..data import StepSampler, load_digits_splits
from ..models.visual_prompts import add_visual_prompts
from ..training.fit import fit
from .classifier import _shift, one_cycle_adamw

PROMPT_INIT_FILE = "prompt_init.safetensors"


@dataclass
class ViTRecipe:
    hidden_size: int = 64
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 128
    patch_size: int = 2
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 5e-4
    max_shift: int = 1  # random translation augmentation, pixels
    prompt_tokens: int = 10
    prompt_deep: bool = False
    prompt_epochs: int = 30  # stage 2: prompts + a new head on a frozen backbone
    prompt_lr: float = 1e-2
    split_seed: int = 0
    seed: int = 0

    def __post_init__(self):
        check_positive("recipe", hidden_size=self.hidden_size, layers=self.layers, heads=self.heads,
                       epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, prompt_tokens=self.prompt_tokens,
                       prompt_epochs=self.prompt_epochs, prompt_lr=self.prompt_lr)


class Logits(nn.Module):
    """A transformers classifier as a plain module: images (B, 1, 8, 8) in [0, 1] -> logits (B, C)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(pixel_values=images).logits


def vit_config(recipe: ViTRecipe, num_classes: int = 10):
    from transformers import ViTConfig

    return ViTConfig(image_size=8, patch_size=recipe.patch_size, num_channels=1, hidden_size=recipe.hidden_size,
                     num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads,
                     intermediate_size=recipe.intermediate_size, num_labels=num_classes,
                     attn_implementation="eager")  # vmap (Fast-NTK) has no batching rule for CPU SDPA


def _train(model, params, train_set, recipe: ViTRecipe, epochs: int, lr: float, desc: str, progress: bool):
    """AdamW + one-cycle over `params` of `model` (images -> logits), shift augmentation, seeded batches."""
    accelerator = Accelerator()
    total = epochs * -(-len(train_set) // recipe.batch_size)
    model, optimizer, schedule = one_cycle_adamw(accelerator, model, params, lr, recipe.weight_decay, total)
    sampler = StepSampler(train_set, recipe.batch_size, recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    model.train()

    def loss_fn(step):
        idx = sampler.indices(step)
        images = _shift(train_set.images[idx], recipe.max_shift, gen).to(accelerator.device)
        return nn.functional.cross_entropy(model(images), train_set.labels[idx].to(accelerator.device)), None

    fit(accelerator, optimizer, schedule, total, loss_fn, desc, progress, shown=None)
    return accelerator.unwrap_model(model).eval()


def train_vit(recipe: ViTRecipe, train_set=None, progress: bool = True):
    """Stage 1: the digits ViT (a transformers `ViTForImageClassification`), trained on all its weights."""
    from transformers import ViTForImageClassification

    set_seed(recipe.seed)
    if train_set is None:
        train_set, _ = load_digits_splits(recipe.split_seed)
    model = Logits(ViTForImageClassification(vit_config(recipe)))
    return _train(model, model.parameters(), train_set, recipe, recipe.epochs, recipe.lr, "train ViT",
                  progress).model


def prompt_tune(backbone, recipe: ViTRecipe, train_set, progress: bool = True) -> tuple:
    """Stage 2 on a copy of `backbone`: prompts + a new head trained on `train_set`, the rest frozen.

    Returns:
        (the prompt-tuned model, w0 {name: tensor} of its prompts and head before tuning).
    """
    set_seed(recipe.seed)
    model = copy.deepcopy(backbone).eval()
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(recipe.seed)
    with torch.no_grad():  # a new head, initialised as the ViT's (normal, std initializer_range; zero bias)
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=generator)
                                      * model.config.initializer_range)
        model.classifier.bias.zero_()
    prompts = add_visual_prompts(model, recipe.prompt_tokens, recipe.prompt_deep, seed=recipe.seed)
    trained = [prompts.tokens, model.classifier.weight, model.classifier.bias]
    for p in trained:
        p.requires_grad_(True)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    wrapped = _train(Logits(model), trained, train_set, recipe, recipe.prompt_epochs, recipe.prompt_lr,
                     "prompt-tune ViT", progress)
    return wrapped.model.requires_grad_(True).eval(), w0


def load_prompted_vit(folder):
    """A prompt-tuned sibling saved by `train_vit_models`: the model with its visual prompts attached."""
    from transformers import ViTForImageClassification

    from ..models.visual_prompts import load_visual_prompts

    model = ViTForImageClassification.from_pretrained(folder, use_safetensors=True,
                                                      attn_implementation="eager").eval()  # vmap-friendly
    load_visual_prompts(model, folder)
    return model


def vit_accuracy(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.inference_mode():
        return (model(pixel_values=images).logits.argmax(1) == labels).float().mean().item()


def train_vit_models(config_path: str, output: str, overrides=(), embed_as: Optional[str] = None) -> dict:
    """Both stages: `output` (the ViT) and `output`_prompted (its prompt-tuned sibling: the model folder, its
    `visual_prompts.safetensors` and `prompt_init.safetensors`); with `embed_as` NAME, shipped as embedded:NAME and
    embedded:NAME_prompted."""
    from safetensors.torch import save_file

    from ..config_loading import load_mapping, validate
    from ..models.visual_prompts import save_visual_prompts
    from . import ship_recipe_output

    given = load_mapping(config_path, overrides)
    recipe = validate(ViTRecipe(), given)
    train, test = load_digits_splits(recipe.split_seed)
    vit = train_vit(recipe, train)
    vit.save_pretrained(output)
    entry = ship_recipe_output(output, recipe, config_path, {"test_accuracy": vit_accuracy(vit, test.images,
                                                                                             test.labels)}, embed_as)
    prompted, w0 = prompt_tune(vit, recipe, train)
    sibling = Path(f"{output}_prompted")
    prompted.save_pretrained(sibling, state_dict={k: v for k, v in prompted.state_dict().items()
                                                  if not k.startswith("visual_prompts.")})
    save_visual_prompts(prompted, sibling)
    save_file({n: t.contiguous() for n, t in w0.items()}, str(sibling / PROMPT_INIT_FILE))
    metrics = {"test_accuracy": vit_accuracy(prompted, test.images, test.labels), "backbone": "embedded "
               f"{embed_as or output} (frozen); trained: visual_prompts.tokens, classifier"}
    ship_recipe_output(sibling, recipe, config_path, metrics, f"{embed_as}_prompted" if embed_as else None)
    return {**entry, "prompted_test_accuracy": metrics["test_accuracy"]}
