"""Pipelines in, pipelines out: the Python API for Hugging Face users.

    import diffunlearn
    pipe = diffunlearn.from_pretrained("embedded:digits/ddpm")   # or a Hub id, a local folder, an output folder
    result = diffunlearn.unlearn(pipe, forget=[7], method="sfr_on", seed=0)
    result.pipeline(class_labels=[7, 3])                          # the same pipeline class, unlearned, in memory
    result.report                                                 # what report.json holds
    result.save_pretrained("out/seven"); result.push_to_hub("me/ddpm-without-seven")

The run is the CLI's (`runs/unlearn.unlearn_run`), handed a validated config object and the input pipeline in
memory: the starting config (a run folder's own when the pipeline was loaded from one, else the shipped config of
its family, `configs/`) takes the call's settings and is validated once; the run trains a copy of the pipeline (the
input is never modified; caches key it by a sha256 of its weights), and the output folder is the CLI's: the pipeline
at its root with its model card, report.json, config.yaml and gallery/ beside it (a temporary folder when no output
is given, removed when the call fails).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .api_settings import BASE, RUN_CONFIG, SOURCE, apply_settings, set_dotted, starting_config
from .assets import EMBEDDED_PREFIX, embedded_names, resolve_config_path, resolve_model_path
from .config_tree import first_line
from .errors import UserError
from .outputs import pipeline_folder, write_json
from .run_folder import loadable, recorded_base, recorded_config


def pipeline_families() -> dict:
    """{pipeline class name: family wrapper} of the diffusion families (not the image classifiers)."""
    from .registry import FAMILIES

    return {f.pipeline_class.__name__: f for f in FAMILIES.load_all().values() if hasattr(f, "pipeline_class")}


def family_of(pipe) -> str:
    """The model family of a pipeline object (by its class)."""
    by_class = pipeline_families()
    if type(pipe).__name__ in by_class and type(pipe) is by_class[type(pipe).__name__].pipeline_class:
        return by_class[type(pipe).__name__].family
    raise UserError(f"unsupported pipeline {type(pipe).__name__}; valid: {', '.join(sorted(by_class))}")


def _first_line(exc: BaseException) -> str:
    """`Type: first line of the message` of an error from diffusers or huggingface_hub."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def _class_name(local: str, path: str) -> str:
    """`_class_name` of the pipeline in a local folder or a Hub repository (its `model_index.json`)."""
    from huggingface_hub.errors import EntryNotFoundError

    valid = "give a diffusers pipeline folder, a run folder, a Hub id (org/name) or one of: " + \
        ", ".join(EMBEDDED_PREFIX + n for n in embedded_names())
    if Path(local).is_dir():
        index = Path(local) / "model_index.json"
        if not index.is_file():
            raise UserError(f"{path!r} holds no model_index.json; {valid}")
    else:
        from huggingface_hub import hf_hub_download

        try:
            index = Path(hf_hub_download(local, "model_index.json"))
        except (OSError, ValueError, EntryNotFoundError) as exc:
            raise UserError(f"cannot get {path!r} from the Hub ({_first_line(exc)}); {valid}") from None
    try:
        return json.loads(index.read_text()).get("_class_name")
    except (ValueError, AttributeError):
        raise UserError(f"{path!r}: model_index.json is not a diffusers pipeline index; {valid}") from None


def from_pretrained(path, **kwargs):
    """Load a diffusers folder, Hub id, `embedded:NAME` or diffunlearn run folder as its pipeline class
    (`ClassConditionalDDPMPipeline`, `DiTPipeline`, `StableDiffusionPipeline`, ...; safetensors only). A run
    folder's recorded config comes with it: `unlearn` starts from it, `evaluate` compares with the run's base."""
    if not isinstance(path, (str, os.PathLike)):
        raise UserError(f"from_pretrained({path!r}): give a folder, a Hub id or embedded:NAME as a string")
    path = str(path)
    local = resolve_model_path(pipeline_folder(path))
    class_name = _class_name(local, path)
    by_class = pipeline_families()
    if class_name not in by_class:
        raise UserError(f"{path!r} holds a {class_name} pipeline; valid: {', '.join(sorted(by_class))}")
    try:
        pipe = by_class[class_name].from_pretrained(local, **kwargs).pipeline
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise UserError(f"cannot load {path!r} as a {class_name} ({_first_line(exc)})") from None
    setattr(pipe, SOURCE, path)
    recorded = recorded_config(path)
    if recorded is not None:
        setattr(pipe, RUN_CONFIG, recorded)
        setattr(pipe, BASE, recorded_base(recorded))
    return pipe


@dataclass
class UnlearnResult:
    """An unlearning run's outputs: `pipeline` (in memory), `report`, and the run folder they came from."""

    pipeline: object
    report: dict
    folder: Path

    def save_pretrained(self, path) -> None:
        """Write the run folder to `path`: the pipeline at its root (so `PipelineClass.from_pretrained(path)` loads
        it, with its model card `README.md`), `report.json`, `config.yaml`, `losses.jsonl` and `gallery/` beside it:
        the folder `push_to_hub` uploads."""
        shutil.copytree(self.folder, path, dirs_exist_ok=True)

    def push_to_hub(self, repo_id: str, private: bool = False, token=None, **kwargs):
        """Upload the run folder, as `save_pretrained` writes it, to the Hub repository `repo_id` (created if
        missing) through huggingface_hub."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(folder_path=str(self.folder), repo_id=repo_id, **kwargs)


def unlearn(pipe_or_config, forget=None, method=None, anchor=None, seed=None, output=None, config=None,
            overrides=None, evaluate: bool = True, overwrite: bool = False, progress: bool = True, remain=None,
            **keywords):
    """Unlearn `forget` from a pipeline; returns an `UnlearnResult`.

    Args:
        pipe_or_config: a pipeline (`ClassConditionalDDPMPipeline`, `DiTPipeline`, `StableDiffusionPipeline`, ...),
            or a YAML config path (the CLI form: then `output` is required and the report dict is returned).
        forget: class ids (Python, numpy or torch integers) or names (DDPM, DiT), or prompt(s) (text families).
        method: a registered method (default: the config's, SFR-on); anchor: prompt(s) the forget prompt(s) map
            onto; remain: the remain prompts (default: the starting config's, less any prompt asked to be
            forgotten, which the report's `notes` name); seed: the run's seed.
        output: the run folder (default: a new temporary folder, left for `result.save_pretrained` to copy).
        config: a run config to start from (default: the config of the run folder the pipeline was loaded from,
            else the shipped config of the pipeline's family).
        overrides: {dotted.key: value} applied on top; keywords steps=, lr=, batch_size=, subset=, judge= map onto
            train.steps, train.lr, train.batch_size, model.subset, eval.judge.

    Raises:
        UserError: any bad argument or config value, before anything runs (nothing is left behind).
    """
    from .config_loading import build_config
    from .registry import get_family
    from .runs.unlearn import unlearn_run

    if isinstance(pipe_or_config, (str, os.PathLike)):  # the YAML form: diffunlearn.unlearn(config, output, ...)
        path = resolve_config_path(pipe_or_config)
        if not path.is_file():
            raise UserError(f"unlearn({str(pipe_or_config)!r}): neither a pipeline nor a YAML config file; load the "
                            "model first (pipe = diffunlearn.from_pretrained(...)) or give a config path")
        if output is None:
            raise UserError("diffunlearn.unlearn(CONFIG.yaml, output=...) needs an output folder")
        extra = list(overrides) if isinstance(overrides, (list, tuple)) else \
            [f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items()]
        return unlearn_run(path, output, extra, overwrite=overwrite, evaluate=evaluate, progress=progress)
    pipe = pipe_or_config
    family = family_of(pipe)
    source = getattr(pipe, SOURCE, None) or getattr(pipe, "name_or_path", None)
    raw = starting_config(pipe, family, config)
    notes = apply_settings(raw, pipe, family, forget, anchor, remain, method, seed, overrides, keywords)
    set_dotted(raw, "model.family", family)
    set_dotted(raw, "model.path", str(source) if source else "memory")  # recorded; the run trains a copy of `pipe`
    set_dotted(raw, "model.source", str(source) if source else None)
    cfg = build_config(raw)  # every setting checked once, before anything runs
    work = Path(tempfile.mkdtemp(prefix="diffunlearn-")) if output is None else None  # the run folder's parent
    out = Path(output) if output is not None else work / "run"
    try:
        report = unlearn_run(cfg, out, overwrite=overwrite, evaluate=evaluate, progress=progress,
                             base=get_family(family)(pipe))
        if notes:
            report["notes"] = notes
            write_json(out / "report.json", report)
        unlearned = from_pretrained(str(out))
    except BaseException:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    if source:  # presets and provenance follow the original base (its card names it as base_model)
        setattr(unlearned, SOURCE, str(source))
    setattr(unlearned, BASE, str(source) if source and loadable(str(source)) else None)  # what `evaluate` uses
    return UnlearnResult(unlearned, report, out)


def evaluate(pipe, forget=None, anchor=None, judge=None, base=None, config=None, output=None, overrides=None,
             **keywords) -> dict:
    """Score a pipeline under its run's protocol: forget accuracy, retained accuracy, FID against the base model
    `base` (a pipeline; default: the base its run folder recorded, or the pipeline's own source when it is not an
    unlearned run). Returns report.json's `{"model", "metrics", "protocol"}`.

    Raises:
        UserError: a bad argument, or no `base=` where the pipeline's base is not on this machine.
    """
    from .runs.evaluate import evaluate_model_command

    family = family_of(pipe)
    raw = starting_config(pipe, family, config)
    if judge is not None:
        keywords["judge"] = judge
    apply_settings(raw, pipe, family, forget, anchor, None, None, None, overrides, keywords)
    # the base: the one an unlearned pipeline came from, else (a pipeline that is no run) the pipeline's own source
    base_path = getattr(pipe, BASE) if hasattr(pipe, BASE) else getattr(pipe, SOURCE, None)
    if base is None and not loadable(base_path):
        raise UserError(f"evaluate: the base of this {type(pipe).__name__} is not on this machine ({base_path!r}); "
                        "pass base=PIPELINE")
    work = Path(tempfile.mkdtemp(prefix="diffunlearn-eval-"))
    try:
        if base is not None:
            family_of(base)
            base.save_pretrained(work / "base", safe_serialization=True)
            base_path = str(work / "base")
        set_dotted(raw, "model.path", base_path)
        pipe.save_pretrained(work / "model", safe_serialization=True)
        result = evaluate_model_command(raw, str(work / "model"), output or work / "eval.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result
