"""Run folders read back: the config a run recorded, its base, and when a finished result may be reused.

A run folder (what `diffunlearn unlearn` and `diffunlearn.unlearn(...).save_pretrained` write) holds the unlearned
pipeline at its root (`model_index.json`, the components, the model card `README.md`) and beside it `config.yaml`
(the run's resolved config), `report.json`, `losses.jsonl` and `gallery/`. Commands and API calls given such a folder
take the forget target, judge and protocol from its own config; a CONFIG that names another target is refused.

A finished result (a run's `report.json`, a suite's `robustness.json`, an evaluation's JSON) records its identity:
the resolved config (attack budgets included), the sha256 of each model's weight files and the package version. It
is reused only when the identity a rerun would have is the same; otherwise it is computed again.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .assets import EMBEDDED_PREFIX, resolve_model_path, weights_sha256
from .config_loading import build_config, read_yaml
from .errors import UserError
from .outputs import CONFIG_FILE, pipeline_folder, scrub

IDENTITY_KEY = "identity"


def recorded_config(path) -> dict | None:
    """The resolved config a run folder recorded (`config.yaml` beside its pipeline), or None when `path` is not a
    run folder (a plain diffusers folder, an embedded model, a Hub id)."""
    folder = Path(str(path))
    file = folder / CONFIG_FILE
    if not (folder.is_dir() and file.is_file() and (Path(pipeline_folder(folder)) / "model_index.json").is_file()):
        return None
    data = yaml.safe_load(file.read_text())
    return data if isinstance(data, dict) and {"model", "forget"} <= set(data) else None


def loadable(path) -> bool:
    """Whether a recorded model path can be loaded here (`<local>/NAME` and moved folders cannot)."""
    if not isinstance(path, str) or path.startswith("<local>/"):
        return False
    try:
        resolve_model_path(path)
    except UserError:
        return False
    return True


def recorded_base(raw: dict) -> str | None:
    """Where a recorded run's base model is: `model.path`, or else `model.source` (the original of the copy an API
    run trained from, gone after the run), the first that loads here; None when neither does."""
    model = raw.get("model") or {}
    return next((p for p in (model.get("path"), model.get("source")) if loadable(p)), None)


def _target(cfg) -> dict:
    return {"model.family": cfg.model.family, "forget.classes": list(cfg.forget.classes),
            "forget.prompts": list(cfg.forget.prompts), "forget.anchors": list(cfg.forget.anchors)}


def config_for_model(config_path, model_path, overrides=(), base_given: bool = False) -> dict:
    """The raw config under which to score or attack `model_path`.

    A run folder brings its own (its base from `model.path` / `model.source`); CONFIG is then optional and, when
    given, must name (with `overrides`) the run's family and forget target, and is used as given. Any other model
    needs CONFIG. `base_given`: the caller brings the base (in memory), so the recorded one need not load here.

    Raises:
        UserError: no CONFIG for a folder that is not a run; a CONFIG naming another target than the run; a run whose
            base is not on this machine (and no CONFIG or `model.path=` override names one).
    """
    if isinstance(config_path, dict):  # a raw config given as an object (the Python API's)
        return json.loads(json.dumps(config_path))
    recorded = recorded_config(model_path)
    if recorded is None:
        if config_path is None:
            raise UserError(f"--model {str(model_path)!r} is not a run folder (no {CONFIG_FILE} beside a pipeline); "
                            "give the run CONFIG that unlearned it")
        return read_yaml(config_path)
    raw = json.loads(json.dumps(recorded))  # a copy
    if config_path is not None:  # CONFIG's protocol and paths, once it names the run's target
        given = read_yaml(config_path)
        mine, theirs = _target(build_config(given, overrides)), _target(build_config(raw))
        changed = {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}
        if changed:
            what = "; ".join(f"{k} {a} in CONFIG, {b} in the run" for k, (a, b) in changed.items())
            raise UserError(f"CONFIG {str(config_path)!r} names another target than the run in {str(model_path)!r} "
                            f"({what}); leave CONFIG out to use the run's own config")
        return given
    base = recorded_base(raw)
    if base is None and not base_given and not any(str(o).startswith("model.path=") for o in overrides):
        raise UserError(f"the run in {str(model_path)!r} started from model.path "
                        f"{raw['model'].get('path')!r}, which is not on this machine; give its base as "
                        "model.path=FOLDER")
    if base is not None:
        raw["model"]["path"] = base
    return raw


def model_digest(path: str) -> str:
    """sha256 over a local model folder's weight files (names and bytes); a Hub id and an in-memory model's key
    (`memory:...`) stand for themselves."""
    if str(path).startswith("memory:"):
        return str(path)
    local = resolve_model_path(str(path)) if str(path).startswith(EMBEDDED_PREFIX) else str(path)
    return weights_sha256(local) if Path(local).is_dir() else f"hub:{local}"


def identity(config: dict, models: dict, **settings) -> dict:
    """What a finished result depends on: the resolved config, each model's weight digest, the package version, and
    any other `settings` (a suite's attack budgets)."""
    from .version import __version__

    digests = {role: model_digest(p) for role, p in models.items()}
    return scrub(json.loads(json.dumps({"config": config, **settings, "models": digests, "diffunlearn": __version__})))


def reusable(file, expected: dict) -> dict | None:
    """The finished result in `file` when it records `expected` as its identity, else None (absent, written by
    another config, model or version: compute it again)."""
    file = Path(file)
    if not file.is_file():
        return None
    result = json.loads(file.read_text())
    return result if result.get(IDENTITY_KEY) == expected else None
