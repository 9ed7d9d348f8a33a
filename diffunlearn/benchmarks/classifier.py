"""Classification unlearning benchmark: RT, FT, GA, RL, SFR-on, Fast-NTK (head) and Fast-NTK (BN + head) side by
side on one base classifier, for each forget scenario, scored with FA, RA, TA, MIA, D_KL to RT, Avg.D and run time.

RT retrains from scratch on D_r with the base model's own recipe. FT, GA, RL and SFR-on run on the same engine as
diffusion unlearning (`Trainer` + the method files) through the `classifier` model family; Fast-NTK is the closed
form of `diffunlearn.ntk.unlearn`. Every row is measured in the same process, one after the other.
"""

from __future__ import annotations

import copy
import csv
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Dict, Optional

from ..config import TrainConfig, check_choice
from ..config_loading import validate
from ..errors import UserError
from ..evaluation.classification import GAP_KEYS, classification_report
from ..outputs import markdown_table
from .scenarios import ScenarioConfig, make_split

METRICS = ("FA", "RA", "TA", "MIA", "D_KL", "Avg.D", "RTE")
ENGINE_METHODS = ("ft", "ga", "rl", "sfr_on")  # run by the Trainer; RT and Fast-NTK are not iterative methods
MEAN = "mean of"  # the trial label of a scenario's per-method means: "mean of N"
NTK_INITS = ("zeros", "recorded", "current")


@dataclass
class FastNTKSettings:
    """Fast-NTK rows: `weight_decay` null = the base recipe's; `init` zeros (the centre of the recipe's weight
    decay), recorded (the head's recorded w0, `head_init.safetensors`) or current (the trained weights)."""

    weight_decay: Optional[float] = None
    init: str = "zeros"
    curvature: str = "uniform"
    batch_size: int = 256

    def __post_init__(self):
        check_choice("fast_ntk", "init", self.init, NTK_INITS)


@dataclass
class ClassifierBenchmarkConfig:
    """The benchmark: a base classifier, its recipe (for RT), scenarios, a shared `train` section and, per engine
    method, `{method: {...}, train: {...}}` overrides of its defaults and of the shared train section."""

    model: str = "embedded:digits/classifier_plain"
    recipe: str = "configs/recipes/digits_classifier_plain.yaml"
    scenarios: Dict[str, ScenarioConfig] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    methods: Dict[str, Any] = field(default_factory=dict)
    fast_ntk: FastNTKSettings = field(default_factory=FastNTKSettings)
    seed: int = 0

    def __post_init__(self):
        for name in self.methods:
            check_choice("methods", "name", name, ENGINE_METHODS)


@dataclass
class ForgetTarget:
    """The `forget` section the methods read: the forgotten classes (empty when samples are forgotten); never a
    concept (prompts are for text-to-image families)."""

    classes: list = field(default_factory=list)
    prompts: list = field(default_factory=list)
    is_concept: bool = False


@dataclass
class EngineRun:
    """What the `Trainer` and the methods read of a run config (a `RunConfig` needs a class or prompt target, and
    sample forgetting has neither)."""

    method: Any
    train: TrainConfig
    seed: int
    forget: ForgetTarget = field(default_factory=ForgetTarget)


def load_benchmark_config(path, overrides=()) -> ClassifierBenchmarkConfig:
    from ..config_loading import load_mapping

    raw = load_mapping(path, overrides)
    scenarios, methods = raw.pop("scenarios", None), raw.pop("methods", None) or {}  # free-form maps: checked here
    if not isinstance(scenarios, dict) or not scenarios:
        raise UserError(f"config {str(path)!r} has no scenarios; give e.g. "
                        "scenarios: {class: {forget_classes: [7]}}")
    if not isinstance(methods, dict):
        raise UserError(f"config key 'methods' must map method names to settings, got {methods!r}")
    cfg = validate(ClassifierBenchmarkConfig(), raw)
    cfg.scenarios = {name: scenario_config(name, entry) for name, entry in scenarios.items()}
    cfg.methods = methods
    cfg.__post_init__()
    return cfg


def scenario_config(name: str, entry) -> ScenarioConfig:
    valid = ("forget_classes", "forget_each", "forget_fraction", "seed", "seeds")
    if not isinstance(entry, dict) or set(entry) - set(valid):
        raise UserError(f"scenarios.{name} must be a mapping with keys among {', '.join(valid)}; got {entry!r}")
    return ScenarioConfig(**entry)


def engine_run(cfg: ClassifierBenchmarkConfig, name: str, forget_classes=()) -> EngineRun:
    """The validated method and train settings of one engine method."""
    from ..registry import get_method

    entry = cfg.methods.get(name) or {}
    unknown = sorted(set(entry) - {"method", "train"})
    if unknown:
        raise UserError(f"methods.{name} has unknown keys {unknown}; valid: method, train")
    method_cls = get_method(name)
    return EngineRun(validate(method_cls.config_cls(), {"name": name, **(entry.get("method") or {})}),
                     validate(copy.deepcopy(cfg.train), entry.get("train") or {}), cfg.seed,
                     ForgetTarget(list(forget_classes)))


def run_engine_method(name: str, run: EngineRun, base, split, work_dir) -> tuple[Any, float]:
    """Unlearn a copy of `base` (an `ImageClassifier`) with an engine method; returns (network, seconds)."""
    from ..models.image_classifier import ImageClassifier
    from ..registry import get_method
    from ..training.trainer import Trainer

    model = ImageClassifier(copy.deepcopy(base.network), base.pixel_range, base.num_classes)
    start = perf_counter()
    Trainer(run, model, get_method(name), split.forget, split.retain, work_dir, progress=False).train()
    return model.network.eval(), perf_counter() - start


def run_fast_ntk(settings: FastNTKSettings, subset: str, network, split, weight_decay: float, recorded_w0):
    """Fast-NTK on `subset` ("head" or "bn+head"); returns (network, seconds).

    The linearisation point w0: the head at `settings.init` (zeros, recorded or current), other subset weights
    (BN) at their trained values, i.e. "trained backbone + the head it was fitted from".
    """
    import torch

    from ..ntk.subset import select_subset
    from ..ntk.unlearn import fast_ntk_scrub

    init = None
    if settings.init != "current":
        head = set(select_subset(network, "head").names)
        chosen = set(select_subset(network, subset).names)
        init = {n: (recorded_w0[n] if settings.init == "recorded" else torch.zeros_like(p)) if n in head
                else p.detach() for n, p in network.named_parameters() if n in chosen}
    start = perf_counter()
    result = fast_ntk_scrub(network, split.forget, split.retain, subset=subset, loss="ce", weight_decay=weight_decay,
                            init=init, curvature=settings.curvature, batch_size=settings.batch_size, cache=False)
    return result.model.eval(), perf_counter() - start


def run_trial(cfg: ClassifierBenchmarkConfig, name: str, trial: ScenarioConfig, base, recipe, train, test,
              recorded_w0, progress=print) -> list:
    """All rows of one forget request: dicts with scenario, trial, method and the `METRICS`."""
    from ..recipes.classifier import train_classifier

    split = make_split(trial, train, test, base.num_classes)
    progress(f"[{name}: {trial.describe()}] D_f {len(split.forget)}, D_r {len(split.retain)}, test "
             f"{len(split.test)}: RT")
    start = perf_counter()
    rt = train_classifier(recipe, train_set=split.retain, progress=False).eval()
    models = {"RT": (rt, perf_counter() - start), "Original": (base.network.eval(), math.nan)}
    for method in ENGINE_METHODS:
        progress(f"[{name}: {trial.describe()}] {method}")
        with tempfile.TemporaryDirectory(prefix=f"bench_{method}_") as work:
            models[method.upper().replace("_", "-")] = run_engine_method(
                method, engine_run(cfg, method, trial.forget_classes), base, split, work)
    wd = recipe.weight_decay if cfg.fast_ntk.weight_decay is None else cfg.fast_ntk.weight_decay
    for label, subset in (("Fast-NTK (head)", "head"), ("Fast-NTK (BN + head)", "bn+head")):
        progress(f"[{name}: {trial.describe()}] {label}")
        models[label] = run_fast_ntk(cfg.fast_ntk, subset, base.network, split, wd, recorded_w0)
    rows = []
    for method, (network, seconds) in models.items():
        report = classification_report(network, rt, split.forget, split.retain, split.test)
        rows.append({"scenario": name, "trial": trial.describe(), "method": method,
                     **{k: report[k] for k in METRICS[:-1]}, "RTE": seconds})
    return rows


def mean_rows(rows: list) -> list:
    """Per method, the mean of every metric over the trials in `rows` (one scenario); trial "mean of N"."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    count = len(rows) // len(methods)
    return [{"scenario": rows[0]["scenario"], "trial": f"{MEAN} {count}", "method": m,
             **{k: sum(r[k] for r in rows if r["method"] == m) / count for k in METRICS}} for m in methods]


def run_scenario(cfg: ClassifierBenchmarkConfig, name: str, base, recipe, train, test, recorded_w0,
                 progress=print) -> list:
    """Rows of every trial of a scenario, then (several trials) their per-method means."""
    trials, rows = cfg.scenarios[name].trials(), []
    for trial in trials:
        rows += run_trial(cfg, name, trial, base, recipe, train, test, recorded_w0, progress)
    return rows + (mean_rows(rows) if len(trials) > 1 else [])


def trial_rows(rows: list, scenario: str) -> list:
    """The rows of a scenario's single trials (its means left out)."""
    return [r for r in rows if r["scenario"] == scenario and not r["trial"].startswith(MEAN)]


def summary_rows(rows: list, scenario: str) -> list:
    """The rows a scenario is judged on: its means when it has several trials, else its single trial's rows."""
    means = [r for r in rows if r["scenario"] == scenario and r["trial"].startswith(MEAN)]
    return means or trial_rows(rows, scenario)


def _gap(row: dict, rt: dict, key: str) -> float:
    return row[key] if key == "D_KL" else abs(row[key] - rt[key])


def acceptance(rows: list) -> list:
    """(claim, holds) pairs checked on the summary rows (trial means), per scenario.

    Fast-NTK (head) vs the original model: |metric - RT| strictly smaller, or equal when both gaps are 0 (e.g. RA
    1.0 everywhere: nothing to close); SFR-on's Avg.D below GA's and FT's. With several trials the claim also
    says in how many trials the gap was smaller (strictly) on its own.
    """
    checks = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        by = {r["method"]: r for r in summary_rows(rows, scenario)}
        t = {(r["trial"], r["method"]): r for r in trial_rows(rows, scenario)}
        names = list(dict.fromkeys(trial for trial, _ in t))
        ntk, base, rt = by["Fast-NTK (head)"], by["Original"], by["RT"]
        for key in GAP_KEYS + ("D_KL",):
            gap_ntk, gap_base = _gap(ntk, rt, key), _gap(base, rt, key)
            holds = gap_ntk < gap_base or (gap_ntk == gap_base == 0)
            per_trial = ""
            if len(names) > 1:
                wins = sum(_gap(t[n, "Fast-NTK (head)"], t[n, "RT"], key) < _gap(t[n, "Original"], t[n, "RT"], key)
                           for n in names)
                per_trial = f" (strictly closer in {wins} of {len(names)} trials)"
            checks.append((f"[{scenario}] Fast-NTK (head) closer to RT than Original on {key}: "
                           f"{gap_ntk:.4f} vs {gap_base:.4f}{per_trial}", holds))
        for other in ("GA", "FT"):
            checks.append((f"[{scenario}] SFR-on Avg.D {by['SFR-ON']['Avg.D']:.4f} < {other} "
                           f"{by[other]['Avg.D']:.4f}", by["SFR-ON"]["Avg.D"] < by[other]["Avg.D"]))
    return checks


def scenario_tables(rows: list) -> str:
    """One markdown table per scenario; accuracies and MIA in %, D_KL in nats, RTE in seconds."""
    out = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        summary = summary_rows(rows, scenario)
        trials = list(dict.fromkeys(r["trial"] for r in trial_rows(rows, scenario)))
        what = trials[0] if len(trials) == 1 else f"{MEAN} {len(trials)} trials: " + "; ".join(trials)
        cells = [[r["method"], *(f"{100 * r[k]:.2f}" for k in ("FA", "RA", "TA", "MIA")), f"{r['D_KL']:.3f}",
                  f"{100 * r['Avg.D']:.2f}", f"{r['RTE']:.2f}"] for r in summary]
        out += [f"**{scenario}** ({what})", ""]
        out += markdown_table(["method", "FA", "RA", "TA", "MIA", "D_KL", "Avg.D", "RTE (s)"], cells) + [""]
    return "\n".join(out)


def write_outputs(rows: list, checks: list, output) -> tuple[Path, Path]:
    """Write `table.md` (tables + acceptance) and `results.csv` (raw fractions) into the folder `output`."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    md = scenario_tables(rows) + "\n" + "\n".join(f"- {'holds' if ok else 'DOES NOT HOLD'}: {claim}"
                                                for claim, ok in checks) + "\n"
    (output / "table.md").write_text(md)
    with open(output / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["scenario", "trial", "method", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
    return output / "table.md", output / "results.csv"


def run_benchmark(config_path, output, overrides=(), scenarios=None, progress=print) -> tuple[list, list]:
    """Run every scenario (or the named `scenarios`) and write the outputs; returns (rows, acceptance checks)."""
    from ..assets import resolve_model_path
    from ..data import load_digits_splits
    from ..models.image_classifier import ImageClassifier
    from .base_model import load_head_init, load_recipe

    cfg = load_benchmark_config(config_path, overrides)
    for name in scenarios or ():
        check_choice("scenario", "name", name, cfg.scenarios)
    recipe = load_recipe(cfg.recipe)
    path = resolve_model_path(cfg.model)
    base = ImageClassifier.from_pretrained(path)
    recorded_w0 = load_head_init(path) if cfg.fast_ntk.init == "recorded" else None
    train, test = load_digits_splits(recipe.split_seed)
    rows = []
    for name in scenarios or cfg.scenarios:
        rows += run_scenario(cfg, name, base, recipe, train, test, recorded_w0, progress)
    checks = acceptance(rows)
    write_outputs(rows, checks, output)
    return rows, checks
