"""Recipes that train the embedded base models from scratch (seeded, on accelerate).

They also serve as the retrain-from-scratch reference (RT): the same recipe on the remain set D_r. Each recipe
module registers its kinds with `register_recipe` (`registry.RECIPES`).
"""

from __future__ import annotations

from typing import Optional

import torch

def run_recipe(kind: str, config_path: str, output: str, overrides=(), embed_as: Optional[str] = None) -> dict:
    """Train one base model from a recipe YAML, save it to `output` and optionally ship it as an embedded model.

    Returns the manifest entry (recipe, seed, metrics).
    """
    from ..config_loading import load_mapping, validate
    from ..registry import get_recipe

    kind_entry = get_recipe(kind)
    given = load_mapping(config_path, overrides)
    recipe = validate(kind_entry.config_cls(), given)
    model = kind_entry.train(recipe)
    model.save_pretrained(output)
    return ship_recipe_output(output, recipe, config_path, kind_entry.quality(model, recipe), embed_as)


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
