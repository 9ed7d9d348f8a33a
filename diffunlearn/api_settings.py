"""The Python API's call settings: the config a call starts from, and its keyword arguments put into it.

`starting_config` picks the raw config (a given YAML, the run folder's recorded config, or the family's shipped
preset); `apply_settings` puts `forget=`, `anchor=`, `remain=`, `method=`, `seed=`, the keywords and `overrides=`
into it as values (no YAML strings); the run validates the result once.
"""

from __future__ import annotations

import copy
import numbers
from pathlib import Path

from .assets import CONFIGS, EMBEDDED_PREFIX
from .config_loading import read_yaml
from .errors import UserError

KEYWORDS = {"steps": "train.steps", "lr": "train.lr", "batch_size": "train.batch_size", "subset": "model.subset",
            "judge": "eval.judge"}
SOURCE = "_diffunlearn_source"  # attribute from_pretrained sets on the pipelines it loads
RUN_CONFIG = "_diffunlearn_run_config"  # ... and, for a run folder, the config that run recorded
BASE = "_diffunlearn_base"  # the base an unlearned pipeline came from, where it loads here (else None)


def preset(family: str, source) -> Path:
    """The shipped run config a family's `presets` name for an embedded model or for any other checkpoint."""
    from .registry import get_family

    presets = get_family(family).presets
    path = CONFIGS / presets["embedded" if str(source or "").startswith(EMBEDDED_PREFIX) else "checkpoint"]
    if not path.is_file():
        raise UserError(f"no shipped config at {str(path)!r}; pass config=PATH to a run config")
    return path


def starting_config(pipe, family: str, config=None) -> dict:
    """The raw config a call starts from: `config` (a YAML path), else the run config the pipeline's run folder
    recorded, else the shipped preset of its family (the digits one for embedded models)."""
    if config is not None:
        return read_yaml(config)
    recorded = getattr(pipe, RUN_CONFIG, None)
    if recorded is not None:
        return copy.deepcopy(recorded)
    return read_yaml(preset(family, getattr(pipe, SOURCE, None) or getattr(pipe, "name_or_path", None)))


def _as_list(value) -> list:
    """`value` as a list of items: a string, number, mapping or 0-d array / tensor is one item."""
    scalar = isinstance(value, (str, bytes, numbers.Number, dict)) or not hasattr(value, "__iter__") or \
        getattr(value, "ndim", 1) == 0
    return [value] if scalar else list(value)


def _label_ids(pipe, forget) -> list:
    """Class ids from ids (Python, numpy or torch integers) or class names (through `get_label_ids`, as DiTPipeline
    has)."""
    items = _as_list(forget)
    names = [x for x in items if isinstance(x, str)]
    if names and not hasattr(pipe, "get_label_ids"):
        raise UserError(f"forget={names!r}: {type(pipe).__name__} has no class names; give class ids")
    labels = getattr(pipe, "labels", None) or {}
    unknown = [n for n in names if labels and n not in labels]
    if unknown:
        valid = sorted(labels)
        raise UserError(f"unknown class name(s) {unknown}; valid: {', '.join(valid[:20])}"
                        + (f" ... ({len(valid)} in all)" if len(valid) > 20 else ""))
    ids = iter(pipe.get_label_ids(names)) if names else iter(())
    out = []
    for x in items:
        if isinstance(x, str):
            out.append(next(ids))
            continue
        try:
            if isinstance(x, bool):
                raise TypeError
            out.append(x.__index__())  # int, numpy and 0-d torch integers; not 7.5, not True
        except (AttributeError, TypeError, RuntimeError, ValueError):
            raise UserError(f"forget={forget!r}: {x!r} is not a class id; give integer class ids or class "
                            "names") from None
    return out


def set_dotted(raw: dict, dotted: str, value) -> None:
    """raw[a][b] = value for the dotted key `a.b` (sections created as needed; validated with the config)."""
    *sections, key = dotted.split(".")
    node = raw
    for name in sections:
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    node[key] = value


def apply_settings(raw: dict, pipe, family: str, forget=None, anchor=None, remain=None, method=None, seed=None,
                   overrides=None, keywords=None) -> list:
    """Put the call's settings into the raw config `raw` (validated once, with the config, afterwards); returns
    notes for the report (what the call changed in the starting config)."""
    keywords = keywords or {}
    unknown = sorted(set(keywords) - set(KEYWORDS))
    if unknown:
        raise UserError(f"unknown keyword(s) {unknown}; valid: {sorted(KEYWORDS)} or overrides={{'dotted.key': "
                        "value}")
    if overrides is not None and not isinstance(overrides, dict):
        raise UserError(f"overrides={overrides!r}: give a mapping {{'dotted.key': value}}")
    from .registry import get_family

    if method is not None and method != (raw.get("method") or {}).get("name"):
        raw["method"] = {"name": method}  # that method's defaults, not the preset's SFR-on settings
    items, notes = {KEYWORDS[k]: v for k, v in keywords.items()}, []
    text = get_family(family).conditioning == "text"
    if (anchor is not None or remain is not None) and not text:
        raise UserError(f"anchor= / remain= are for prompts (text-to-image pipelines); classes are forgotten "
                        f"without them (got anchor={anchor!r}, remain={remain!r})")
    if forget is not None and text:  # prompts: the text-to-image families
        prompts = [str(p) for p in _as_list(forget)]
        items.update({"forget.prompts": prompts, "forget.classes": []})
        if anchor is not None:
            items["forget.anchors"] = [str(a) for a in _as_list(anchor)]
        kept = [str(p) for p in _as_list(remain)] if remain is not None else \
            list((raw.get("forget") or {}).get("remain_prompts") or [])
        dropped = [p for p in kept if p in prompts]
        if dropped and remain is None:
            notes.append(f"forget.remain_prompts: {dropped} left the starting config's remain prompts (asked to be "
                         "forgotten)")
        items["forget.remain_prompts"] = [p for p in kept if p not in prompts or remain is not None]
    elif forget is not None:
        items.update({"forget.classes": _label_ids(pipe, forget), "forget.prompts": []})
    if seed is not None:
        items["seed"] = seed
    items.update(overrides or {})
    for key, value in items.items():
        set_dotted(raw, key, value)
    return notes
