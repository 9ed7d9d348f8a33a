"""Reading run configs: YAML + dotted overrides, validated against the config dataclasses (unknown keys, wrong
types and out-of-range values refused with the valid choices named).

YAML is read with the safe loader and then checked as a tree (`config_tree.check_tree`) before anything else touches
it.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import List

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import ForgetConfig, MethodConfig, ModelConfig, RunConfig, check_seed
from .assets import resolve_config_path
from .config_tree import check_tree, first_line as _first_line
from .errors import UserError

INT_BOUND = 2 ** 63  # integers must fit in 64 bits (torch's int64; larger ones fail deep inside a run)


def _check_known_keys(schema: DictConfig, given: dict, prefix: str = "") -> None:
    for key, value in given.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str):
            raise UserError(f"config key {full!r} is a {type(key).__name__}, not a string; quote it")
        if key not in schema:
            valid = ", ".join(f"{prefix}{k}" for k in schema.keys())
            raise UserError(f"unknown config key {full!r}; valid keys here: {valid}")
        child = schema._get_node(key)
        structured = isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child))
        if structured and isinstance(value, dict):  # a section (not a free-form mapping such as eval.prompts)
            _check_known_keys(child, value, prefix=f"{full}.")
        elif structured and value is not None:
            valid = ", ".join(f"{full}.{k}" for k in child.keys())
            raise UserError(f"config key {full!r} is a section, a mapping of its keys ({valid}); got {value!r}")
        elif isinstance(child, ListConfig) and isinstance(value, dict):
            raise UserError(f"config key {full!r} takes a list, got a mapping {value!r}")
        elif isinstance(child, DictConfig) and isinstance(value, list):
            raise UserError(f"config key {full!r} takes a mapping, got a list {value!r}")
        elif isinstance(child, (ListConfig, DictConfig)) and isinstance(value, (list, dict)):
            _check_elements(child, value, full)


def _check_elements(schema, value, key: str) -> None:
    """Items of a list / mapping of plain values (List[int], Dict[str, str]) must be plain (OmegaConf lets a
    nested list into a List[int])."""
    element = getattr(schema._metadata, "element_type", None)
    if element not in (int, float, str, bool):
        return
    items = enumerate(value) if isinstance(value, list) else value.items()
    for k, item in items:
        if isinstance(item, (list, tuple, dict)):
            where = f"{key}[{k}]" if isinstance(value, list) else f"{key}.{k}"
            what = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[element]
            raise UserError(f"config key {where!r} must be {what}, got {item!r}")


def parse_overrides(overrides: List[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UserError(f"bad override {item!r}; expected key=value, e.g. forget.classes=[7]")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except (OmegaConfBaseException, yaml.YAMLError, TypeError, ValueError, RecursionError) as exc:
        raise UserError(f"bad override in {overrides}: {_first_line(exc)}") from None


def read_yaml(path) -> dict:
    """A YAML config file as a checked mapping; `configs/REST` also names the shipped config REST."""
    path = resolve_config_path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or _first_line(exc)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML: {problem}{at}") from None
    except RecursionError:
        raise UserError(f"config file {str(path)!r} nests too deeply to read") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {str(path)!r} is not UTF-8 text: {_first_line(exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping, got {type(raw).__name__}")
    check_tree(raw, f"config file {str(path)!r}")
    return raw


def merge_overrides(raw: dict, overrides: List[str] = ()) -> dict:
    """A checked config mapping with the dotted `key=value` overrides applied (each refused in one line naming it)
    and interpolations resolved: the one merge of every config, recipe and benchmark file."""
    if not isinstance(raw, dict):
        raise UserError(f"a config must be a mapping, got {type(raw).__name__}")
    check_tree(raw)
    try:
        merged = OmegaConf.create(raw)
    except OmegaConfBaseException as exc:
        raise UserError(f"bad config: {_first_line(exc)}") from None
    for item in overrides:  # one at a time, so that a failure names its override
        parsed = parse_overrides([item])
        try:
            merged = OmegaConf.merge(merged, parsed)
        except (OmegaConfBaseException, TypeError, ValueError) as exc:
            raise UserError(f"cannot apply override {item!r} (config key {item.split('=', 1)[0]!r}): "
                            f"{_first_line(exc)}") from None
    try:  # interpolations (${seed}, ${oc.env:NAME}) resolve on the merged config, before any section is checked
        return OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise UserError(f"bad value for config key {key!r}: {_first_line(exc)}") from None


def load_mapping(path, overrides: List[str] = ()) -> dict:
    """A YAML file plus dotted overrides as one checked mapping (for a schema's `validate`)."""
    return merge_overrides(read_yaml(path), list(overrides))


def build_config(raw: dict, overrides: List[str] = ()) -> RunConfig:
    """Validate a raw config mapping plus dotted overrides against the schema of the chosen method."""
    from .registry import METHODS, check_method, get_method

    given = merge_overrides(_switched_method(raw, overrides) if isinstance(raw, dict) else raw, overrides)
    method = given.get("method", {})
    if not isinstance(method, dict):
        raise UserError(f"config key 'method' must be a mapping with a 'name', got {method!r}")
    name = method.get("name", MethodConfig.name)
    if not isinstance(name, str):
        get_method("sfr_on")  # fills the registry
        raise UserError(f"config key 'method.name' must be a method name, got {name!r}; valid: "
                        f"{', '.join(sorted(METHODS))}")
    method_cls = get_method(name)
    # the target and the model before the method's own keys: a method of the wrong kind for this run (UCE on class
    # forgetting, ESD on a class model) is refused as such, not for the keys of the method a preset was written for
    model, forget = given.get("model", {}), given.get("forget", {})
    if isinstance(model, dict) and isinstance(forget, dict):  # else the full check below names the bad section
        run = SimpleNamespace(method=SimpleNamespace(name=name), model=validate(ModelConfig(), model, "model."),
                              forget=validate(ForgetConfig(), forget, "forget."))
        run.forget.check_given()
        check_method(run, method_cls, fsdp=False)
        _check_method_keys(method, method_cls, raw.get("method"))
    cfg = validate(RunConfig(method=method_cls.config_cls()), given)
    cfg.forget.check_given()
    return cfg


def _switched_method(raw: dict, overrides) -> dict:
    """`raw` with its method section replaced by `{name: NEW}` when an override `method.name=NEW` names another
    method than the YAML's (the YAML's method keys are that method's: NEW starts from its own defaults, and later
    `method.*` overrides apply on top), as the Python API's `method=` does; else `raw` itself."""
    names = [item.split("=", 1)[1].strip() for item in overrides if str(item).split("=", 1)[0].strip() == "method.name"]
    written = raw.get("method")
    old = written.get("name", MethodConfig.name) if isinstance(written, dict) else None
    if not names or old is None or names[-1] in (old, f"'{old}'", f'"{old}"'):
        return raw
    return {**raw, "method": {"name": old}}  # the override then sets the new name


def _check_method_keys(method: dict, method_cls, written) -> None:
    """A key of another method under `method:` (a preset's section, with method.name changed) is named as such."""
    from .registry import METHODS

    def keys(cls) -> list:
        return [f.name for f in dataclasses.fields(cls.config_cls)]

    own = keys(method_cls)
    written = written.get("name", MethodConfig.name) if isinstance(written, dict) else None
    for key in method:
        if key in own:
            continue
        owners = sorted(n for n, m in METHODS.items() if key in keys(m))
        if not owners:
            continue  # a typo: validate names the valid keys
        whose = (f"{written}, the method this config's method section was written for" if written in owners
                 else ", ".join(owners))
        valid = ", ".join(f"method.{k}" for k in own)
        raise UserError(f"unknown config key 'method.{key}' for method {method_cls.name!r}: it belongs to {whose}; "
                        f"give {method_cls.name} a method section of its own (method: {{name: {method_cls.name}}}); "
                        f"valid keys here: {valid}")


def _is_seed(name: str) -> bool:
    return name in ("seed", "seeds") or name.endswith(("_seed", "_seeds"))


def _check_numbers(value, key: str, seed: bool = False) -> None:
    """Refuse NaN and infinite numbers anywhere in a config mapping (they pass every `<` / `>` check), integers
    past 64 bits, and seeds (keys `seed`, `*_seed`, lists `seeds`, `*_seeds`) outside 0..2**32-1."""
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_numbers(item, f"{key}[{i}]", seed)
    elif isinstance(value, dict):
        for k, item in value.items():
            _check_numbers(item, f"{key}.{k}" if key else str(k), _is_seed(str(k)))
    elif isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key {key!r} must be a finite number, got {value!r}")
    elif isinstance(value, int) and not isinstance(value, bool):
        if seed:
            check_seed("", **{key: value})
        if not -INT_BOUND <= value < INT_BOUND:
            raise UserError(f"config key {key!r} is out of range, got {value}; valid: integers of at most 64 bits")


def validate(defaults, given: dict, prefix: str = ""):
    """Merge a plain mapping into a dataclass instance of defaults, checking keys, types and values (finite
    numbers, 64-bit integers, seeds in 0..2**32-1). `prefix`: where the mapping sits in the config ("model."), for
    the messages."""

    def bad_value(exc) -> UserError:
        key = getattr(exc, "full_key", None)
        key = f"{prefix}{key}" if key else prefix.rstrip(".") or "?"
        return UserError(f"bad value for config key {key!r}: {_first_line(exc)}")

    schema = OmegaConf.structured(defaults)
    _check_known_keys(schema, given, prefix)
    try:
        merged = OmegaConf.merge(schema, given)
        plain = OmegaConf.to_container(merged, resolve=True)
    except (OmegaConfBaseException, TypeError, ValueError) as exc:
        raise bad_value(exc) from None
    _check_numbers(plain, prefix.rstrip("."))  # before __post_init__ compares them
    try:
        return OmegaConf.to_object(merged)
    except UserError:
        raise
    except (OmegaConfBaseException, TypeError, ValueError) as exc:
        raise bad_value(exc) from None


def load_config(path, overrides: List[str] = ()) -> RunConfig:
    return build_config(read_yaml(path), overrides)


def config_to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
