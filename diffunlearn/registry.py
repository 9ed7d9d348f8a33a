"""Name -> entry registries of the five extension kinds: methods, model families, attacks, judges and recipes.

Every kind registers the same way: an entry registers itself in its own file (`@register_method`,
`@register_family`, `@register_attack` on a class; `@register_judge(NAME, valid=...)` on a judge loader;
`register_recipe(RecipeKind(...))` at the end of a recipe module), a second entry under a taken name is refused, and
a lookup (`get_method`, `get_family`, `get_attack`, `get_judge`, `get_recipe`, or `REGISTRY.names()`) first imports
every module of the kind's package, so adding one is adding one file. The docs' and the tests' lists come from here.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

from .errors import UserError, choice_error


class Registry(dict):
    """The entries of one extension kind, by name (a dict, filled as the kind's modules are imported)."""

    def __init__(self, kind: str, package: str, key: str = "name"):
        super().__init__()
        self.kind, self.package, self.key = kind, package, key

    def register(self, entry, name: str | None = None):
        """Add `entry` under `name` (default: its `key` attribute); a different entry under a taken name is refused
        (the same class imported again, e.g. on a module reload, replaces itself)."""
        name = getattr(entry, self.key) if name is None else name
        if name in self and _origin(self[name]) != _origin(entry):
            raise ValueError(f"{self.kind} {name!r} is registered twice: {_origin(self[name])} and {_origin(entry)}")
        self[name] = entry
        return entry

    def load_all(self) -> "Registry":
        """Import every module of the kind's package (or the one module) so that their registrations run."""
        module = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            importlib.import_module(f"{self.package}.{info.name}")
        return self

    def lookup(self, name):
        """The entry registered as `name`; an unknown name is a `UserError` listing the valid ones."""
        self.load_all()
        if name not in self:
            raise choice_error(self.kind, name, self)
        return self[name]

    def names(self) -> list:
        return sorted(self.load_all())


def _origin(entry) -> str:
    if isinstance(entry, (JudgeKind, RecipeKind)):
        entry = entry.load if isinstance(entry, JudgeKind) else entry.train
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', repr(entry))}"


@dataclass(frozen=True)
class JudgeKind:
    """A judge: `load(source, eval_cfg, device) -> Judge`, and what a valid `eval.classifier` for it is."""

    name: str
    load: Callable
    valid: str


@dataclass(frozen=True)
class RecipeKind:
    """A recipe that trains an embedded base model: its config dataclass, `train(recipe) -> model` and
    `quality(model, recipe) -> dict` of metrics."""

    name: str
    config_cls: Any
    train: Callable
    quality: Callable


METHODS = Registry("method", "diffunlearn.methods")
FAMILIES = Registry("model family", "diffunlearn.models", key="family")
ATTACKS = Registry("attack", "diffunlearn.robustness")
JUDGES = Registry("eval.judge", "diffunlearn.evaluation.judge_loading")
RECIPES = Registry("recipe", "diffunlearn.recipes")


def register_method(cls):
    return METHODS.register(cls)


def register_family(cls):
    """Register a model family; a diffusion family's contract (`DiffusionModel.check_contract`) is checked here."""
    check = getattr(cls, "check_contract", None)
    if check is not None:
        check()
    return FAMILIES.register(cls)


def register_attack(cls):
    return ATTACKS.register(cls)


def register_judge(name: str, valid: str):
    """Decorator of a judge loader `load(source, eval_cfg, device)`; `valid` says what `eval.classifier` it takes."""
    def decorate(load):
        JUDGES.register(JudgeKind(name, load, valid))
        return load
    return decorate


def register_recipe(kind: RecipeKind) -> RecipeKind:
    return RECIPES.register(kind)


def check_method(cfg, method_cls, fsdp: bool = True) -> None:
    """Refuse a method that cannot forget this kind of target (classes or prompts) or work on this family or
    model.subset, or (`fsdp`) run under FSDP if asked. Config loading runs it with `fsdp=False`, before the method's
    own keys are checked, so that a method of the wrong kind is refused as such."""
    from .distributed import fsdp_requested

    if fsdp and fsdp_requested() and not method_cls.supports_fsdp:
        valid = sorted(n for n, m in METHODS.items() if m.supports_fsdp)
        raise UserError(f"method {cfg.method.name!r} is not supported under FSDP; use one of: {', '.join(valid)} "
                        "(or DDP: configs/accelerate/multi_gpu.yaml)")

    concept = cfg.forget.is_concept
    wrong_kind = not method_cls.supports_concepts if concept else not method_cls.supports_classes
    families = method_cls.supported_families
    if families is not None and cfg.model.family not in families:
        if wrong_kind:  # both: say what the method is for, and what fits this run
            family = cfg.model.family
            valid = sorted(n for n, m in METHODS.items()
                           if (m.supports_concepts if concept else m.supports_classes)
                           and (m.supported_families is None or family in m.supported_families))
            what = "classes" if method_cls.supports_classes else "prompts"
            target = "forget.prompts" if concept else "forget.classes"
            raise UserError(f"method {cfg.method.name!r} forgets {what} only, on the {', '.join(families)} "
                            f"{'family' if len(families) == 1 else 'families'}; for {target} on the {family} family "
                            f"use one of: {', '.join(valid)}")
        raise UserError(f"method {cfg.method.name!r} does not work on the {cfg.model.family} family; valid: "
                        f"{', '.join(families)}")
    subsets = method_cls.supported_subsets
    if subsets is not None and cfg.model.subset not in subsets:
        raise UserError(f"method {cfg.method.name!r} does not work on model.subset={cfg.model.subset}; valid: "
                        f"{', '.join(subsets)}")
    if concept and not method_cls.supports_concepts:
        valid = sorted(n for n, m in METHODS.items() if m.supports_concepts)
        raise UserError(f"method {cfg.method.name!r} forgets classes only; for forget.prompts use one of: "
                        f"{', '.join(valid)}")
    if not concept and not method_cls.supports_classes:
        valid = sorted(n for n, m in METHODS.items() if m.supports_classes)
        raise UserError(f"method {cfg.method.name!r} forgets prompts only; for forget.classes use one of: "
                        f"{', '.join(valid)}")


def get_method(name: str):
    return METHODS.lookup(name)


def get_family(name: str):
    return FAMILIES.lookup(name)


def get_attack(name: str):
    return ATTACKS.lookup(name)


def get_judge(name: str) -> JudgeKind:
    return JUDGES.lookup(name)


def get_recipe(name: str) -> RecipeKind:
    return RECIPES.lookup(name)
