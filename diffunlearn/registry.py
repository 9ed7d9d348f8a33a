"""Name -> class registries for unlearning methods, model families and robustness attacks.

A method, a family or an attack registers itself with a decorator in its own file; `get_method`, `get_family` and
`get_attack` import every module of their package first, so adding one is adding one file.
"""

import importlib
import pkgutil

from .errors import choice_error

METHODS: dict = {}
FAMILIES: dict = {}
ATTACKS: dict = {}


def register_method(cls):
    METHODS[cls.name] = cls
    return cls


def register_family(cls):
    """Register a model family; a diffusion family's contract (`DiffusionModel.check_contract`) is checked here."""
    check = getattr(cls, "check_contract", None)
    if check is not None:
        check()
    FAMILIES[cls.family] = cls
    return cls


def register_attack(cls):
    ATTACKS[cls.name] = cls
    return cls


def import_submodules(package_name: str) -> None:
    """Import every module of a package so that their registration decorators run."""
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package_name}.{info.name}")


def get_method(name: str):
    import_submodules("diffunlearn.methods")
    if name not in METHODS:
        raise choice_error("method", name, METHODS)
    return METHODS[name]


def get_family(name: str):
    import_submodules("diffunlearn.models")
    if name not in FAMILIES:
        raise choice_error("model family", name, FAMILIES)
    return FAMILIES[name]


def get_attack(name: str):
    import_submodules("diffunlearn.robustness")
    if name not in ATTACKS:
        raise choice_error("attack", name, ATTACKS)
    return ATTACKS[name]
