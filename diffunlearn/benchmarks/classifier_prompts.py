"""Classification unlearning on visual prompts (`family: vit_prompts` in a classifier benchmark config): the
prompt-tuned digits ViT, RT (its prompts and head re-tuned on D_r from the same frozen backbone, by the recipe's
stage 2), Fast-NTK (prompt), Fast-NTK (prompt + head) and, for context, Fast-NTK (head), per forget scenario, with
the classifier benchmark's metrics (FA, RA, TA, MIA, D_KL to RT, Avg.D, run time) and tables.

Fast-NTK linearises at the recorded start of the prompt tuning (`init: recorded`: `prompt_init.safetensors`, the
prompts' seeded initial values and the new head's) or at the tuned weights (`init: current`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Dict, Optional

from ..config import check_choice
from ..config_loading import read_yaml, validate
from ..errors import UserError
from ..evaluation.classification import classification_report
from .classifier import _gap, mean_rows, scenario_config, summary_rows, trial_rows, write_outputs
from .scenarios import ScenarioConfig, make_split

ROWS = ("Fast-NTK (prompt)", "Fast-NTK (prompt + head)", "Fast-NTK (head)")  # the last: the head alone, for context
CHECKED = ("FA", "TA", "MIA", "D_KL")  # the class scenario's acceptance: Fast-NTK (prompt + head) closer to RT


@dataclass
class PromptBenchmarkConfig:
    family: str = "vit_prompts"
    model: str = "embedded:digits/vit_prompted"
    recipe: str = "configs/recipes/digits_vit.yaml"
    scenarios: Dict[str, ScenarioConfig] = field(default_factory=dict)
    weight_decay: Optional[float] = None  # null: the recipe's
    init: str = "recorded"
    curvature: str = "uniform"
    batch_size: int = 256
    chunk_size: Optional[int] = 64
    seed: int = 0

    def __post_init__(self):
        check_choice("config", "init", self.init, ("recorded", "current"))


def load_prompt_config(raw: dict) -> PromptBenchmarkConfig:
    scenarios = raw.pop("scenarios", None)
    if not isinstance(scenarios, dict) or not scenarios:
        raise UserError("a vit_prompts benchmark config needs scenarios, e.g. "
                        "scenarios: {class: {forget_classes: [7]}}")
    cfg = validate(PromptBenchmarkConfig(), raw)
    cfg.scenarios = {name: scenario_config(name, entry) for name, entry in scenarios.items()}
    return cfg


def prompt_acceptance(rows: list) -> list:
    """(claim, holds): Fast-NTK (prompt + head) strictly closer to RT than the original on FA, TA, MIA, D_KL."""
    checks = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        by = {r["method"]: r for r in summary_rows(rows, scenario)}
        trials = {(r["trial"], r["method"]): r for r in trial_rows(rows, scenario)}
        names = list(dict.fromkeys(trial for trial, _ in trials))
        for key in CHECKED:
            ntk, base = _gap(by[ROWS[1]], by["RT"], key), _gap(by["Original"], by["RT"], key)
            wins = sum(_gap(trials[n, ROWS[1]], trials[n, "RT"], key)
                       < _gap(trials[n, "Original"], trials[n, "RT"], key) for n in names)
            checks.append((f"[{scenario}] {ROWS[1]} closer to RT than Original on {key}: {ntk:.4f} vs {base:.4f} "
                           f"(strictly closer in {wins} of {len(names)} trials)", ntk < base or ntk == base == 0))
    return checks


def run_prompt_benchmark(raw: dict, output, scenarios=None, progress=print) -> tuple[list, list]:
    """Every scenario (or the named ones) of a `vit_prompts` config; writes the outputs, returns (rows, checks)."""
    from safetensors.torch import load_file

    from ..assets import resolve_model_path
    from ..data import load_digits_splits
    from ..models.visual_prompts import remove_visual_prompts
    from ..ntk.subset import select_subset
    from ..ntk.unlearn import fast_ntk_scrub
    from ..recipes.vit import PROMPT_INIT_FILE, Logits, ViTRecipe, load_prompted_vit, prompt_tune

    cfg = load_prompt_config(raw)
    for name in scenarios or ():
        check_choice("scenario", "name", name, cfg.scenarios)
    recipe = validate(ViTRecipe(), read_yaml(cfg.recipe))
    path = resolve_model_path(cfg.model)
    original = load_prompted_vit(path)
    w0 = load_file(str(Path(path) / PROMPT_INIT_FILE)) if cfg.init == "recorded" else None
    backbone = copy.deepcopy(original)
    remove_visual_prompts(backbone)
    wd = recipe.weight_decay if cfg.weight_decay is None else cfg.weight_decay
    train, test = load_digits_splits(recipe.split_seed)
    rows = []
    for name in scenarios or cfg.scenarios:
        trials, scenario_rows = cfg.scenarios[name].trials(), []
        for trial in trials:
            split = make_split(trial, train, test, original.config.num_labels)
            progress(f"[{name}: {trial.describe()}] D_f {len(split.forget)}, D_r {len(split.retain)}: RT")
            start = perf_counter()
            rt = Logits(prompt_tune(backbone, recipe, split.retain, progress=False)[0])
            models = {"RT": (rt, perf_counter() - start), "Original": (Logits(original), math.nan)}
            for label, subset in zip(ROWS, ("prompt", "prompt+head", "head")):
                progress(f"[{name}: {trial.describe()}] {label}")
                init = {n: w0[n] for n in select_subset(original, subset).names} if w0 is not None else None
                start = perf_counter()
                result = fast_ntk_scrub(original, split.forget, split.retain, subset=subset, loss="ce",
                                        weight_decay=wd, init=init, curvature=cfg.curvature,
                                        batch_size=cfg.batch_size, chunk_size=cfg.chunk_size, cache=False)
                models[label] = (Logits(result.model), perf_counter() - start)
            for method, (network, seconds) in models.items():
                report = classification_report(network, rt, split.forget, split.retain, split.test)
                scenario_rows.append({"scenario": name, "trial": trial.describe(), "method": method,
                                      **{k: report[k] for k in ("FA", "RA", "TA", "MIA", "D_KL", "Avg.D")},
                                      "RTE": seconds})
        rows += scenario_rows + (mean_rows(scenario_rows) if len(trials) > 1 else [])
    checks = prompt_acceptance(rows)
    write_outputs(rows, checks, output)
    return rows, checks


def run_classifier_benchmark(config_path, output, overrides=(), scenarios=None, progress=print) -> tuple[list, list]:
    """A classifier benchmark config of either kind: `family: vit_prompts` (this module) or the CNN benchmark
    (`benchmarks.classifier.run_benchmark`)."""
    from ..config_loading import load_mapping
    from .classifier import run_benchmark

    raw = load_mapping(config_path, overrides)
    if raw.get("family") == "vit_prompts":
        return run_prompt_benchmark(raw, output, scenarios, progress)
    return run_benchmark(config_path, output, overrides, scenarios, progress)
