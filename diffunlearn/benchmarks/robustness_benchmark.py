"""Robustness side by side (`eval/robustness_benchmark.py`): every method of a generation benchmark config unlearns
the same target, then the attack suite runs on each result, on the base model and on RT (when given); one table of
FA, FID ratio, unlearning wall time and each attack's ASR.

Rows are the benchmark config's (`configs/digits/benchmark_*.yaml`): the run config's own method (SFR-on) and each
entry of `methods`, built by `row_config` with the run's `train` and `stop` sections (every method stops when
forgotten under the same rule, up to `train.steps`). Each row is a full `unlearn` run (its evaluation gives FA and
the FID ratio under the run's protocol) followed by `diffunlearn attack` on its pipeline. Finished rows are kept in
OUTPUT/runs/ and OUTPUT/attacks/ with their identity (config, budgets, model weights, version), so a rerun of the
same command only does what is missing, and a rerun with other settings does again what they change.
"""

from __future__ import annotations

from pathlib import Path

from .generation_config import load_benchmark_config, row_config
from ..config_loading import config_to_dict, config_to_yaml, load_config
from ..evaluation.metrics import with_interval
from ..outputs import atomic_write, markdown_table, write_json
from ..robustness.suite import suite_result
from ..run_folder import identity, reusable
from ..runs.evaluate import evaluate_model_command
from ..runs.unlearn import unlearn_run


def _row_names(bench) -> list:
    own = load_config(bench.run).method.name
    return [own] + [name for name in bench.methods if name != own]


def unlearning_seconds(timing: dict) -> float:
    """Wall seconds of unlearning: the mask, the steps and the in-loop checks (not the final evaluation)."""
    return timing["mask"] + timing["unlearning"] + (timing.get("stop_checks") or 0.0)


def _asr_entries(suite: dict) -> dict:
    """ASR, wall seconds and (relearning) steps to FA threshold per attack, of a suite's attacked model."""
    attacks = suite["attacks"]
    return {"asr": {a: e["asr"] for a, e in attacks.items()},
            "asr_ci95": {a: e["unlearned"].get("asr_ci95") for a, e in attacks.items()},
            "attack_s": {a: e["unlearned"]["seconds"] for a, e in attacks.items()},
            "steps_to_fa": attacks.get("relearning", {}).get("unlearned", {}).get("protocol", {}).get("steps_to_fa")}


def run_robustness_benchmark(config_path, output, attacks=None, rt=None, overrides=(), attack_overrides=(),
                             progress=print) -> dict:
    """Run every row; writes OUTPUT/robustness_table.md and robustness_benchmark.json and returns the latter."""
    bench = load_benchmark_config(config_path)
    root = Path(output)
    configs = {name: row_config(bench, name, overrides=list(overrides)) for name in _row_names(bench)}  # all checks
    if rt == "auto":  # the base's recipe without the target (cached), once every row's config is checked
        from ..recipes.retrained import rt_for_run

        rt = str(rt_for_run(next(iter(configs.values())), progress=progress or (lambda _: None)))
    rows = {}
    base_eval = None
    beside = {"with_base": False, "progress": progress}  # the base is a row of its own
    for name, cfg in configs.items():
        config = root / "configs" / f"{name}.yaml"
        atomic_write(config, lambda tmp, c=cfg: tmp.write_text(config_to_yaml(c)))
        run = root / "runs" / name
        report = reusable(run / "report.json", identity(config_to_dict(cfg), {"base": cfg.model.path})) or \
            unlearn_run(str(config), run, overwrite=True, progress=False)
        base_eval = base_eval or report["base"]
        suite = suite_result(str(config), run, root / "attacks" / name, attacks, attack_overrides, **beside)
        rows[name] = {"method": cfg.method.name, "metrics": report["unlearned"],
                      "wall_s": unlearning_seconds(report["timing"]),
                      "stopped_at_step": (report.get("stop") or {}).get("stopped_at_step"),
                      **_asr_entries(suite)}
        if progress:
            progress(f"{name}: FA {rows[name]['metrics']['forget_accuracy']:.3f}, ASR {rows[name]['asr']}")
    first = str(root / "configs" / f"{next(iter(configs))}.yaml")
    base_path = configs[next(iter(configs))].model.path
    base_suite = suite_result(first, base_path, root / "attacks" / "base", attacks, attack_overrides, **beside)
    rows = {"base": {"method": "none", "metrics": base_eval, "wall_s": None, "stopped_at_step": None,
                     **_asr_entries(base_suite)}, **rows}
    if rt:
        metrics = evaluate_model_command(first, rt, root / "attacks" / "rt_eval.json", reuse=True)["metrics"]
        rt_suite = suite_result(first, rt, root / "attacks" / "rt", attacks, attack_overrides, **beside)
        rows["rt"] = {"method": "rt (retrained without the target)", "metrics": metrics, "wall_s": None,
                      "stopped_at_step": None, **_asr_entries(rt_suite)}
    result = {"config": str(config_path), "run": bench.run, "rows": rows}
    write_json(root / "robustness_benchmark.json", result)
    atomic_write(root / "robustness_table.md", lambda tmp: tmp.write_text(table(result) + "\n"))
    return result


def table(result: dict) -> str:
    rows = result["rows"]
    base_fid = rows["base"]["metrics"]["fid_retained"]
    attacks = sorted({a for r in rows.values() for a in r["asr"]})
    cells = []
    for name, r in rows.items():
        m = r["metrics"]
        asr_ci = r.get("asr_ci95") or {}
        cells.append([name, with_interval(m["forget_accuracy"], m.get("forget_accuracy_ci95")),
                      f"{m['fid_retained'] / base_fid:.2f}",
                      "-" if r["wall_s"] is None else f"{r['wall_s']:.1f}",
                      "-" if r["stopped_at_step"] is None else str(r["stopped_at_step"]),
                      *(f"{with_interval(r['asr'][a], asr_ci.get(a))} ({r['attack_s'][a]:.1f} s)" if a in r["asr"]
                        else "-" for a in attacks),
                      " / ".join("never" if v is None else str(v)
                                 for v in (r.get("steps_to_fa") or {}).values()) or "-"])
    return "\n".join(markdown_table(["row", "FA [95% CI]", "FID ratio", "unlearning s", "stopped at",
                                      *(f"{a} ASR [95% CI] (wall)" for a in attacks),
                                      "relearning: steps to FA 0.5 per k"],
                                     cells))
