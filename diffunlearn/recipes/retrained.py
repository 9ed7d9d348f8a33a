"""RT, the retrain-from-scratch reference of class forgetting: the base model's own recipe without the forgotten
classes, trained once per (recipe, classes) and kept in the `rt` disk cache like any other artefact.

    diffunlearn attack --model out/seven --output out/seven_attacks --rt auto

`--rt auto` (and a benchmark's `rt: auto`) takes the recipe recorded for an embedded base in `assets/manifest.json`
(every setting, seed and split of the run that trained it), sets `exclude_classes` to the run's forget classes and
returns the cached RT folder, training it first when absent (the digits DDPM: 11-19 minutes on two CPU cores).
The cache key is a SHA-256 of the recipe kind, every recipe setting and the torch version; the folder is capped by
`DIFFUNLEARN_CACHE_BYTES_RT` (bytes, default 2 GiB), least recently used first.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..assets import EMBEDDED_PREFIX, MANIFEST
from ..disk_cache import GiB, DiskCache, cache_key
from ..errors import UserError

CACHE = DiskCache("rt", "DIFFUNLEARN_CACHE_BYTES_RT", 2 * GiB, suffix=".rt", folder=True)
_NOT_RECIPE = ("command", "config")  # manifest bookkeeping beside the recipe's settings


def base_recipe(cfg) -> tuple:
    """(recipe kind, recipe settings) that trained the run's base model (an embedded class-conditional one)."""
    path = cfg.model.path
    if cfg.forget.is_concept or not path.startswith(EMBEDDED_PREFIX):
        raise UserError(f"--rt auto retrains an embedded class-conditional base without its forget classes; the run's "
                        f"base {path!r} / target is not one: give --rt DIR (a model retrained without the target)")
    entry = json.loads(MANIFEST.read_text()).get(path[len(EMBEDDED_PREFIX):], {})
    if "recipe" not in entry:
        raise UserError(f"the embedded base {path!r} has no recorded recipe; give --rt DIR")
    settings = {k: v for k, v in entry["recipe"].items() if k not in _NOT_RECIPE}
    return cfg.model.family, settings


def rt_recipe(kind: str, settings: dict, classes) -> object:
    """The validated recipe of RT: `settings` with `exclude_classes` = `classes`."""
    from ..config_loading import validate
    from ..registry import get_recipe

    return validate(get_recipe(kind).config_cls(), {**settings, "exclude_classes": sorted(int(c) for c in classes)})


def rt_key(kind: str, recipe) -> str:
    import torch

    return cache_key({"entry": "rt", "kind": kind, "recipe": dataclasses.asdict(recipe), "torch": torch.__version__})


def retrained(kind: str, recipe, progress=print) -> Path:
    """The cached RT folder of `recipe` (a `kind` recipe), trained and stored first when absent."""
    from ..registry import get_recipe

    key = rt_key(kind, recipe)
    found = CACHE.lookup(key)
    if found is not None:
        return found
    progress(f"[rt] training the {kind} recipe without classes {recipe.exclude_classes} ({recipe.steps} steps; "
             "cached for later runs)")
    model = get_recipe(kind).train(recipe, progress=False)
    return CACHE.store(key, lambda tmp: model.save_pretrained(tmp))


def rt_for_run(cfg, progress=print) -> Path:
    """`--rt auto`: the RT folder of the run config's base and forget classes."""
    kind, settings = base_recipe(cfg)
    return retrained(kind, rt_recipe(kind, settings, cfg.forget.classes), progress)
