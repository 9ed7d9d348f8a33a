"""The generation benchmark's settings (YAML), its rows' run configs, and the rules its table applies."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..config_loading import build_config, read_yaml, validate
from ..errors import UserError

ROW_KEYS = ("method", "train", "model", "stop")  # merged onto the row's run config
SAME_IN_EVERY_ROW = ("model", "data", "forget", "eval")  # what a row naming a run config of its own must share


@dataclass
class Criterion:
    forget_accuracy_max: float = 0.05
    fid_ratio_max: float = 1.25  # FID_retained <= this x the base model's (same protocol)

    def met(self, fa: float, fid: float, base_fid: float) -> bool:
        return fa <= self.forget_accuracy_max and fid <= self.fid_ratio_max * base_fid


@dataclass
class PeriodicEval:
    """The cheap protocol of the periodic checks (the rest of the run's `eval` section is kept)."""

    forget_samples: int = 64
    retained_samples_per_class: int = 32
    num_inference_steps: int = 10


@dataclass
class RTSettings:
    recipe: Optional[str] = "configs/recipes/digits_ddpm.yaml"  # null: no RT row
    steps: Optional[int] = None  # null: the recipe's own steps (record a shortened RT, --rt-steps)
    overrides: List[str] = field(default_factory=list)  # dotted overrides of the recipe


@dataclass
class GenerationBenchmarkConfig:
    run: str = "configs/digits/ddpm_sfron.yaml"  # base model, forget target, data, eval protocol, SFR-on
    methods: Dict[str, Any] = field(default_factory=dict)  # baseline -> {method: {...}, train: {...}, model: {...}}
    rt: RTSettings = field(default_factory=RTSettings)
    eval_every: int = 25
    eval_also: List[int] = field(default_factory=list)  # extra check steps (finer resolution early in a run)
    periodic_eval: PeriodicEval = field(default_factory=PeriodicEval)
    criterion: Criterion = field(default_factory=Criterion)
    budget_factor: float = 10.0
    max_steps: Optional[int] = None  # cap of a baseline's budget; null: none
    stop_at_criterion: bool = True  # baselines stop at their first check meeting the criterion
    step_ratio_steps: int = 20  # timed steps of SFR-on and of plain fine-tuning for the time-per-step ratio


def load_benchmark_config(path, overrides=()) -> GenerationBenchmarkConfig:
    """The validated benchmark settings of a YAML file plus `key=value` overrides."""
    from ..config_loading import load_mapping

    raw = load_mapping(path, overrides)
    methods = raw.pop("methods", None) or {}
    if not isinstance(methods, dict) or any(not isinstance(v, (dict, type(None))) for v in methods.values()):
        raise UserError(f"benchmark key 'methods' must map method names to settings, got {methods!r}")
    cfg = validate(GenerationBenchmarkConfig(), raw)
    cfg.methods = {name: dict(entry or {}) for name, entry in methods.items()}
    if cfg.eval_every <= 0 or cfg.budget_factor <= 0 or cfg.step_ratio_steps < 0 or \
            any(step <= 0 for step in cfg.eval_also):
        raise UserError("eval_every, budget_factor and every eval_also step must be > 0 and step_ratio_steps >= 0,"
                        f" got {cfg.eval_every}, {cfg.budget_factor}, {list(cfg.eval_also)}, {cfg.step_ratio_steps}")
    return cfg


def row_method(bench: GenerationBenchmarkConfig, name: str) -> str:
    """The method a row runs: the one its `method.name` names (a variant row), else its own run config's, else the
    row's own name."""
    entry = bench.methods.get(name) or {}
    named = (entry.get("method") or {}).get("name")
    if named or "run" not in entry:
        return named or name
    return (read_yaml(entry["run"]).get("method") or {}).get("name", name)


def row_run(bench: GenerationBenchmarkConfig, name: str) -> dict:
    """The raw run config a row starts from: the benchmark's `run`, or the row's own `run` (a variant kept in a
    config file of its own, e.g. the lasting option), which must share the benchmark run's base, data, target and
    evaluation."""
    entry = bench.methods.get(name) or {}
    raw = read_yaml(bench.run)
    if "run" not in entry:
        return raw
    own = read_yaml(entry["run"])
    differ = [key for key in SAME_IN_EVERY_ROW if key != "model" and own.get(key) != raw.get(key)]
    differ += ["model.path"] if (own.get("model") or {}).get("path") != (raw.get("model") or {}).get("path") else []
    if differ:
        raise UserError(f"methods.{name}.run {entry['run']!r} differs from the benchmark's run {bench.run!r} in "
                        f"{', '.join(differ)}; a row's run config may change method, train and stop only")
    return own


def row_config(bench: GenerationBenchmarkConfig, name: str, steps: Optional[int] = None, overrides=()):
    """The `RunConfig` of one row: the run config with the row's method / train / model settings (and `steps`).

    A row is named after its method, or names it in `method.name` (a variant such as SFR-on with K=1: it starts
    from the run config's method section). `overrides` (dotted, for every row) that start with `method.` apply to
    the rows of the run config's own method only.
    """
    from ..registry import get_method

    entry = bench.methods.get(name) or {}
    unknown = sorted(set(entry) - set(ROW_KEYS) - {"run"})
    if unknown:
        raise UserError(f"methods.{name} has unknown keys {unknown}; valid: run, {', '.join(ROW_KEYS)}")
    raw = row_run(bench, name)
    method_name = row_method(bench, name)
    own = raw.get("method", {}).get("name") == method_name
    if not own:
        raw["method"] = {"name": method_name}
    for key in ROW_KEYS:
        raw[key] = {**(raw.get(key) or {}), **(entry.get(key) or {})}
    row_overrides = [o for o in overrides if own or not o.startswith("method.")]
    cfg = build_config(raw, row_overrides + ([f"train.steps={steps}"] if steps else []))
    method_cls = get_method(method_name)
    if not cfg.forget.is_concept and not getattr(method_cls, "supports_classes", True):
        raise UserError(f"method {method_name!r} forgets prompts only; the run {bench.run!r} forgets classes")
    from ..registry import check_method

    check_method(cfg, method_cls)
    return cfg


def assert_same_protocol(protocols: dict) -> dict:
    """The one protocol of all rows {row: protocol dict}; raises if any row was evaluated differently."""
    (first, reference), *others = protocols.items()
    for name, protocol in others:
        if protocol != reference:
            keys = sorted(k for k in set(reference) | set(protocol) if reference.get(k) != protocol.get(k))
            raise RuntimeError(f"evaluation protocol of row {name!r} differs from row {first!r} in {keys}: rows "
                               "would not be comparable")
    return reference


def first_reaching(history: list, base_fid: float, criterion: Criterion) -> Optional[dict]:
    """The first check {"step", "seconds", "forget_accuracy", "fid_retained"} meeting the criterion, or None."""
    return next((h for h in history if criterion.met(h["forget_accuracy"], h["fid_retained"], base_fid)), None)


def baseline_budget(bench: GenerationBenchmarkConfig, sfr_to_criterion: Optional[int], sfr_steps: int) -> int:
    """`budget_factor` x SFR-on's steps-to-criterion (its full run when it never got there), capped by max_steps."""
    budget = math.ceil(bench.budget_factor * (sfr_to_criterion or sfr_steps))
    return min(budget, bench.max_steps) if bench.max_steps else budget
