"""The benchmark's base classifier: trained by the classifier recipe, shipped with its head's initial weights w0.

`recipes.train_classifier` seeds with `set_seed(recipe.seed)` and builds the `DigitsClassifier` first, so the head
it starts from is a function of the recipe alone; `head_init` rebuilds it. It is saved next to the weights as
`head_init.safetensors` so that Fast-NTK can linearise at the point the head was trained from (`init=`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..models.digits_classifier import DigitsClassifier

HEAD_INIT_FILE = "head_init.safetensors"


def head_init(recipe) -> dict:
    """{"head.weight": (C, F), "head.bias": (C,)}: the head `train_classifier(recipe)` starts from."""
    set_seed(recipe.seed)
    model = DigitsClassifier(num_classes=10, channels=tuple(recipe.channels), reject_class=recipe.reject_class)
    return {name: p.detach().clone().contiguous() for name, p in model.head.named_parameters(prefix="head")}


def load_head_init(folder) -> dict:
    """The recorded w0 of a classifier folder.

    Raises:
        UserError: the folder has no `head_init.safetensors`.
    """
    path = Path(folder) / HEAD_INIT_FILE
    if not path.is_file():
        raise UserError(f"{str(folder)!r} has no {HEAD_INIT_FILE} (the recorded head init w0); valid Fast-NTK inits "
                        "here: zeros, current")
    return load_file(str(path))


def load_recipe(path: str, overrides=()):
    """A validated `ClassifierRecipe` from a YAML file plus `key=value` overrides."""
    from ..config_loading import load_mapping, validate
    from ..recipes.classifier import ClassifierRecipe

    given = load_mapping(path, overrides)
    return validate(ClassifierRecipe(), given)


def train_base_classifier(config_path: str, output: str, overrides=(), embed_as: Optional[str] = None) -> dict:
    """Train the classifier recipe, save it with its head init to `output`, optionally ship it as embedded:NAME.

    Returns:
        the manifest entry (recipe, seed, test accuracy).
    """
    from ..recipes import ship_recipe_output
    from ..recipes.classifier import classifier_quality, train_classifier

    recipe = load_recipe(config_path, overrides)
    model = train_classifier(recipe)
    model.save_pretrained(output)
    save_file(head_init(recipe), str(Path(output) / HEAD_INIT_FILE))
    metrics = {"head_init": f"{HEAD_INIT_FILE}: the head before training (set_seed(recipe.seed), then the model)",
               **classifier_quality(model, recipe)}
    return ship_recipe_output(output, recipe, config_path, metrics, embed_as)
