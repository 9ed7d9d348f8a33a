"""Reading run configs: YAML + dotted overrides, validated against the config dataclasses (unknown keys, wrong
types and out-of-range values refused with the valid choices named)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import List

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import MethodConfig, RunConfig
from .errors import UserError


def _check_known_keys(schema: DictConfig, given: dict, prefix: str = "") -> None:
    for key, value in given.items():
        full = f"{prefix}{key}"
        if key not in schema:
            valid = ", ".join(f"{prefix}{k}" for k in schema.keys())
            raise UserError(f"unknown config key {full!r}; valid keys here: {valid}")
        child = schema[key]
        structured = isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child))
        if structured and isinstance(value, dict):  # a section (not a free-form mapping such as eval.prompts)
            _check_known_keys(child, value, prefix=f"{full}.")


def parse_overrides(overrides: List[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UserError(f"bad override {item!r}; expected key=value, e.g. forget.classes=[7]")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise UserError(f"bad override in {overrides}: {str(exc).splitlines()[0]}") from None


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping, got {type(raw).__name__}")
    return raw


def build_config(raw: dict, overrides: List[str] = ()) -> RunConfig:
    """Validate a raw config mapping plus dotted overrides against the schema of the chosen method."""
    from .registry import get_method

    try:
        merged = OmegaConf.merge(OmegaConf.create(raw), parse_overrides(list(overrides)))
    except OmegaConfBaseException as exc:
        raise UserError(f"cannot apply overrides {list(overrides)}: {str(exc).splitlines()[0]}") from None
    given = OmegaConf.to_container(merged, resolve=False)
    method = given.get("method", {})
    if not isinstance(method, dict):
        raise UserError(f"config key 'method' must be a mapping with a 'name', got {method!r}")
    method_cls = get_method(method.get("name", MethodConfig.name))
    cfg = validate(RunConfig(method=method_cls.config_cls()), given)
    cfg.forget.check_given()
    return cfg


def _check_finite(value, key: str) -> None:
    """Refuse NaN and infinite numbers anywhere in a config mapping (they pass every `<` / `>` check)."""
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, item in value.items():
            _check_finite(item, f"{key}.{k}" if key else str(k))
    elif isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key {key!r} must be a finite number, got {value!r}")


def validate(defaults, given: dict):
    """Merge a plain mapping into a dataclass instance of defaults, checking keys, types and values (finite
    numbers only)."""
    schema = OmegaConf.structured(defaults)
    _check_known_keys(schema, given)
    try:
        merged = OmegaConf.merge(schema, given)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise UserError(f"bad value for config key {key!r}: {str(exc).splitlines()[0]}") from None
    _check_finite(OmegaConf.to_container(merged), "")  # before __post_init__ compares them
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise UserError(f"bad value for config key {key!r}: {str(exc).splitlines()[0]}") from None


def load_config(path, overrides: List[str] = ()) -> RunConfig:
    return build_config(read_yaml(path), overrides)


def config_to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
