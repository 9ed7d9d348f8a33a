"""Recipes that train the embedded base models from scratch (seeded, on accelerate).

They also serve as the retrain-from-scratch reference (RT): the same recipe on the remain set D_r.
"""

from __future__ import annotations

from typing import Optional

import torch

# kind -> (module, recipe class, train function, quality function); quality(model, recipe) -> dict of metrics
RECIPES = {
    "ddpm": ("diffunlearn.recipes.ddpm", "DDPMRecipe", "train_ddpm", "ddpm_quality"),
    "classifier": ("diffunlearn.recipes.classifier", "ClassifierRecipe", "train_classifier", "classifier_quality"),
    "vae": ("diffunlearn.recipes.latent", "VAERecipe", "train_vae", "vae_quality"),
    "dit": ("diffunlearn.recipes.latent", "DiTRecipe", "train_dit", "dit_quality"),
    "sd": ("diffunlearn.recipes.text_to_image", "TextToImageRecipe", "train_text_to_image", "text_to_image_quality"),
    "sd3": ("diffunlearn.recipes.text_to_image_sd3", "SD3Recipe", "train_sd3", "text_to_image_quality"),
    "sdxl": ("diffunlearn.recipes.text_to_image_sdxl", "SDXLRecipe", "train_sdxl", "text_to_image_quality"),
}


def recipe_functions(kind: str):
    """(recipe class, train function, quality function) of a recipe kind."""
    import importlib

    from ..errors import choice_error

    if kind not in RECIPES:
        raise choice_error("recipe", kind, RECIPES)
    module_name, *names = RECIPES[kind]
    module = importlib.import_module(module_name)
    return tuple(getattr(module, name) for name in names)


def run_recipe(kind: str, config_path: str, output: str, overrides=(), embed_as: Optional[str] = None) -> dict:
    """Train one base model from a recipe YAML, save it to `output` and optionally ship it as an embedded model.

    Returns the manifest entry (recipe, seed, metrics).
    """
    from omegaconf import OmegaConf

    from ..config_loading import parse_overrides, read_yaml, validate

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

    from ..assets import ASSETS, record_in_manifest

    entry = {"recipe": {"command": " ".join(["python"] + sys.argv), "config": config_path,
                        **dataclasses.asdict(recipe)}, "seed": recipe.seed,
             "torch": torch.__version__, **metrics}
    if embed_as:
        target = ASSETS / embed_as
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(output, target)
        record_in_manifest(embed_as, entry)
    return entry
