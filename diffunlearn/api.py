"""Pipelines in, pipelines out: the Python API for Hugging Face users.

    import diffunlearn
    pipe = diffunlearn.from_pretrained("embedded:digits/ddpm")   # or a Hub id, a local folder, an output folder
    result = diffunlearn.unlearn(pipe, forget=[7], method="sfr_on", seed=0)
    result.pipeline(class_labels=[7, 3])                          # the same pipeline class, unlearned, in memory
    result.report                                                 # what report.json holds
    result.save_pretrained("out/seven"); result.push_to_hub("me/ddpm-without-seven")

The run is the CLI's: the input pipeline is saved to a temporary folder (it is never modified), the shipped
config of its family (`configs/`, the digits one for embedded models) is validated with the call's settings as
overrides, and the output folder is the CLI's (pipeline with its model card, report.json, gallery).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .assets import EMBEDDED_PREFIX, resolve_model_path
from .errors import UserError
from .outputs import pipeline_folder

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # a source checkout or an editable install
KEYWORDS = {"steps": "train.steps", "lr": "train.lr", "batch_size": "train.batch_size", "subset": "model.subset",
            "judge": "eval.judge"}
SOURCE = "_diffunlearn_source"  # attribute from_pretrained sets on the pipelines it loads


def pipeline_families() -> dict:
    """{pipeline class name: family wrapper} of the diffusion families (not the image classifiers)."""
    from .registry import FAMILIES, import_submodules

    import_submodules("diffunlearn.models")
    return {f.pipeline_class.__name__: f for f in FAMILIES.values() if hasattr(f, "pipeline_class")}


def family_of(pipe) -> str:
    """The model family of a pipeline object (by its class)."""
    by_class = pipeline_families()
    if type(pipe).__name__ in by_class and type(pipe) is by_class[type(pipe).__name__].pipeline_class:
        return by_class[type(pipe).__name__].family
    raise UserError(f"unsupported pipeline {type(pipe).__name__}; valid: {', '.join(sorted(by_class))}")


def from_pretrained(path: str, **kwargs):
    """Load a diffusers folder, Hub id, `embedded:NAME` or diffunlearn output folder as its pipeline class
    (`ClassConditionalDDPMPipeline`, `DiTPipeline`, `StableDiffusionPipeline`; safetensors only)."""
    local = resolve_model_path(pipeline_folder(path))
    index = Path(local) / "model_index.json"
    if index.is_file():
        class_name = json.loads(index.read_text()).get("_class_name")
    else:
        from huggingface_hub import hf_hub_download

        class_name = json.loads(Path(hf_hub_download(local, "model_index.json")).read_text()).get("_class_name")
    by_class = pipeline_families()
    if class_name not in by_class:
        raise UserError(f"{path!r} holds a {class_name} pipeline; valid: {', '.join(sorted(by_class))}")
    pipe = by_class[class_name].from_pretrained(local, **kwargs).pipeline
    setattr(pipe, SOURCE, str(path))
    return pipe


def preset(family: str, source) -> Path:
    """The shipped run config a family's `presets` name for an embedded model or for any other checkpoint."""
    from .registry import get_family

    presets = get_family(family).presets
    path = CONFIGS / presets["embedded" if str(source or "").startswith(EMBEDDED_PREFIX) else "checkpoint"]
    if not path.is_file():
        raise UserError(f"no shipped config at {str(path)!r} (a source checkout or editable install has them); "
                        "pass config=PATH to a run config")
    return path


def _label_ids(pipe, forget) -> list:
    """Class ids from ids or class names (names through `get_label_ids`, as DiTPipeline has)."""
    items = [forget] if isinstance(forget, (int, str)) else list(forget)
    names = [x for x in items if isinstance(x, str)]
    if names and not hasattr(pipe, "get_label_ids"):
        raise UserError(f"forget={names!r}: {type(pipe).__name__} has no class names; give class ids")
    ids = iter(pipe.get_label_ids(names)) if names else iter(())
    return [next(ids) if isinstance(x, str) else int(x) for x in items]


def overrides_for(pipe, family: str, forget, anchor, method, seed, overrides, keywords, raw: dict) -> list:
    """Dotted `key=value` overrides for the call's settings (validated with the config afterwards)."""
    unknown = sorted(set(keywords) - set(KEYWORDS))
    if unknown:
        raise UserError(f"unknown keyword(s) {unknown}; valid: {sorted(KEYWORDS)} or overrides={{'dotted.key': "
                        "value}")
    items = {KEYWORDS[k]: v for k, v in keywords.items()}
    from .registry import get_family

    if forget is not None and get_family(family).conditioning == "text":  # prompts: the text-to-image families
        prompts = [forget] if isinstance(forget, str) else list(forget)
        items.update({"forget.prompts": prompts, "forget.classes": []})
        if anchor is not None:
            items["forget.anchors"] = [anchor] if isinstance(anchor, str) else list(anchor)
    elif forget is not None:
        if anchor is not None:
            raise UserError(f"anchor={anchor!r} is for prompts (text-to-image pipelines); classes are forgotten "
                            "without one")
        items.update({"forget.classes": _label_ids(pipe, forget), "forget.prompts": []})
    if method is not None and method != raw.get("method", {}).get("name"):
        raw["method"] = {"name": method}  # that method's defaults, not the preset's SFR-on settings
    if seed is not None:
        items["seed"] = seed
    items.update(overrides or {})
    return [f"{k}={json.dumps(v)}" for k, v in items.items()]


@dataclass
class UnlearnResult:
    """An unlearning run's outputs: `pipeline` (in memory), `report`, and the run folder they came from."""

    pipeline: object
    report: dict
    folder: Path

    def save_pretrained(self, path) -> None:
        """Copy the run folder (pipeline/ with its model card, report.json, gallery/) to `path`."""
        shutil.copytree(self.folder, path, dirs_exist_ok=True)

    def push_to_hub(self, repo_id: str, private: bool = False, token=None, **kwargs):
        """Upload the unlearned pipeline folder (weights and model card; report and gallery under `diffunlearn/`)
        to the Hub repository `repo_id` (created if missing) through huggingface_hub."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="diffunlearn-push-"))
        try:
            shutil.copytree(self.folder / "pipeline", staging, dirs_exist_ok=True)
            for extra in ("report.json", "gallery"):
                source = self.folder / extra
                if source.is_dir():
                    shutil.copytree(source, staging / "diffunlearn" / extra)
                elif source.is_file():
                    (staging / "diffunlearn").mkdir(exist_ok=True)
                    shutil.copy2(source, staging / "diffunlearn" / extra)
            return api.upload_folder(folder_path=str(staging), repo_id=repo_id, **kwargs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def unlearn(pipe_or_config, forget=None, method=None, anchor=None, seed=None, output=None, config=None,
            overrides=None, evaluate: bool = True, overwrite: bool = False, progress: bool = True, **keywords):
    """Unlearn `forget` from a pipeline; returns an `UnlearnResult`.

    Args:
        pipe_or_config: a pipeline (`ClassConditionalDDPMPipeline`, `DiTPipeline`, `StableDiffusionPipeline`),
            or a YAML config path (the CLI form: then `output` is required and the report dict is returned).
        forget: class ids or names (DDPM, DiT), or prompt(s) (Stable Diffusion).
        method: a registered method (default: the config's, SFR-on); anchor: prompt(s) the forget prompt(s) map
            onto (Stable Diffusion); seed: the run's seed.
        output: the run folder (default: a new temporary folder, left for `result.save_pretrained` to copy).
        config: a run config to start from (default: the shipped config of the pipeline's family).
        overrides: {dotted.key: value} applied on top; keywords steps=, lr=, batch_size=, subset=, judge= map onto
            train.steps, train.lr, train.batch_size, model.subset, eval.judge.
    """
    from .commands.unlearn import unlearn_run
    from .config_loading import build_config, read_yaml

    if isinstance(pipe_or_config, (str, Path)):  # the YAML form: diffunlearn.unlearn(config, output, ...)
        if output is None:
            raise UserError("diffunlearn.unlearn(CONFIG.yaml, output=...) needs an output folder")
        extra = list(overrides) if isinstance(overrides, (list, tuple)) else \
            [f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items()]
        return unlearn_run(pipe_or_config, output, extra, overwrite=overwrite, evaluate=evaluate, progress=progress)
    pipe = pipe_or_config
    family = family_of(pipe)
    source = getattr(pipe, SOURCE, None) or getattr(pipe, "name_or_path", None)
    raw = read_yaml(config or preset(family, source))
    items = overrides_for(pipe, family, forget, anchor, method, seed, overrides, keywords, raw)
    work = Path(tempfile.mkdtemp(prefix="diffunlearn-"))
    base = work / "base"  # the input as saved; removed after the run (the output holds what the run needs)
    try:
        pipe.save_pretrained(base, safe_serialization=True)
        items += [f"model.family={family}", f"model.path={json.dumps(str(base))}"]
        if source:
            items.append(f"model.source={json.dumps(str(source))}")
        build_config(raw, items)  # every setting checked before anything runs
        (work / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        out = Path(output) if output is not None else work / "run"
        report = unlearn_run(work / "config.yaml", out, items, overwrite=overwrite, evaluate=evaluate,
                             progress=progress)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if output is not None:
        shutil.rmtree(work, ignore_errors=True)
    unlearned = from_pretrained(str(out / "pipeline"))
    if source:  # presets and provenance follow the original base (its card names it as base_model)
        setattr(unlearned, SOURCE, str(source))
    return UnlearnResult(unlearned, report, out)


def evaluate(pipe, forget=None, anchor=None, judge=None, base=None, config=None, output=None, overrides=None,
             **keywords) -> dict:
    """Score a pipeline under its family's protocol: forget accuracy, retained accuracy, FID against the base
    model `base` (a pipeline; default: the config's model, e.g. the embedded base). Returns report.json's
    `{"model", "metrics", "protocol"}`."""
    from .commands.evaluate import evaluate_model_command
    from .config_loading import read_yaml

    family = family_of(pipe)
    raw = read_yaml(config or preset(family, getattr(pipe, SOURCE, None) or getattr(pipe, "name_or_path", None)))
    if judge is not None:
        keywords["judge"] = judge
    items = overrides_for(pipe, family, forget, anchor, None, None, overrides, keywords, raw)
    work = Path(tempfile.mkdtemp(prefix="diffunlearn-eval-"))
    try:
        pipe.save_pretrained(work / "model", safe_serialization=True)
        if base is not None:
            base.save_pretrained(work / "base", safe_serialization=True)
            items.append(f"model.path={json.dumps(str(work / 'base'))}")
        (work / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        result = evaluate_model_command(work / "config.yaml", str(work / "model"), output or work / "eval.json",
                                        items)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result
