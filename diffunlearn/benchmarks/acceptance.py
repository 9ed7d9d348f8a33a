"""Acceptance grid: one run config over forget targets x seeds, every run in a CSV, the distribution in markdown.

A target is a class id (class configs: `forget.classes=[c]`) or, for concept configs, `FORGET:ANCHOR` as judge
labels (`seven:one`): the forget prompt and the anchor are the prompts that `eval.prompts` maps to those labels, and
every other prompt there is a remain prompt. A finished run whose `report.json` records the same identity (config,
base weights, version) is read back, not rerun, so an interrupted grid resumes where it stopped; a run of other
settings is run again.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path

from ..config_loading import config_to_dict, load_config
from ..errors import UserError
from ..evaluation.criteria import CLASS_FORGETTING, check_class_forgetting
from ..evaluation.metrics import with_interval
from ..evaluation.report import fid_label
from ..run_folder import identity, reusable

COLUMNS = ("target", "seed", "base_fa", "fa", "fa_ci95_low", "fa_ci95_high", "retained_ratio", "fid_ratio",
           "fid", "stopped_at_step", "signals_agree", "unlearning_s", "wall_s", "passed")


def target_overrides(config_path: str, target: str) -> list:
    """Dotted overrides that make `target` the forget target of the run config."""
    cfg = load_config(config_path)
    if not cfg.forget.is_concept:
        if not target.isdigit():
            raise UserError(f"target {target!r}: the config {config_path!r} forgets classes; give class ids (7)")
        return [f"forget.classes=[{target}]"]
    forget, sep, anchor = target.partition(":")
    by_label = {label: prompt for prompt, label in cfg.eval.prompts.items()}
    if not sep or forget not in by_label or anchor not in by_label or forget == anchor:
        raise UserError(f"target {target!r}: give FORGET:ANCHOR, two different labels of eval.prompts; valid "
                        f"labels: {', '.join(by_label)}")
    remain = [p for label, p in by_label.items() if label not in (forget, anchor)]
    quoted = lambda prompts: "[" + ",".join(json.dumps(p) for p in prompts) + "]"  # noqa: E731
    return [f"forget.prompts={quoted([by_label[forget]])}", f"forget.anchors={quoted([by_label[anchor]])}",
            f"forget.remain_prompts={quoted(remain)}", f"forget.concept={forget}"]


def grid_row(target: str, seed: int, report: dict, wall: float, bar: dict) -> dict:
    verdict = check_class_forgetting(report, bar)
    stop, unlearned = report.get("stop") or {}, report["unlearned"]
    low, high = unlearned.get("forget_accuracy_ci95") or (None, None)
    return {"target": target, "seed": seed, "base_fa": report["base"]["forget_accuracy"],
            "fa": unlearned["forget_accuracy"], "fa_ci95_low": low, "fa_ci95_high": high,
            "retained_ratio": verdict["retained_ratio"][0], "fid_ratio": verdict["fid_ratio"][0],
            "fid": fid_label(report["protocol"]) if report.get("protocol") else None,
            "stopped_at_step": stop.get("stopped_at_step"),
            "signals_agree": (report.get("signals") or {}).get("agree"),
            "unlearning_s": report["timing"]["unlearning"] + (report["timing"].get("stop_checks") or 0.0),
            "wall_s": wall, "passed": all(ok for _, ok in verdict.values())}


def run_grid(config_path: str, targets, seeds, output, overrides=(), fa_max=None, progress=print) -> list:
    """Run (or read back) every (target, seed) run; write `results.csv` and `summary.md`; returns the rows."""
    from ..runs.unlearn import unlearn_run

    bar = dict(CLASS_FORGETTING, **({"unlearned_fa_max": fa_max} if fa_max is not None else {}))
    runs = [(str(t), int(s), target_overrides(config_path, str(t))) for t in targets for s in seeds]
    for _, seed, extra in runs:  # every run's config is checked before the first one trains
        load_config(config_path, [*extra, f"seed={seed}", *overrides])
    out, rows = Path(output), []
    for target, seed, extra in runs:
        folder = out / f"{target.replace(':', '_to_')}_seed{seed}"
        start = time.perf_counter()
        wall_file = out / f".{folder.name}.wall_s"  # beside the run folder, which holds only what the run wrote
        cfg = load_config(config_path, [*extra, f"seed={seed}", *overrides])
        report = reusable(folder / "report.json", identity(config_to_dict(cfg), {"base": cfg.model.path}))
        if report is not None and wall_file.is_file():
            wall = float(wall_file.read_text())
        else:
            report = unlearn_run(config_path, folder, [*extra, f"seed={seed}", *overrides], overwrite=True,
                                 progress=False)
            wall = time.perf_counter() - start
            wall_file.write_text(f"{wall}\n")
        rows.append(grid_row(target, seed, report, wall, bar))
        progress(json.dumps(rows[-1]))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.md").write_text(summary_markdown(rows, bar, config_path, overrides) + "\n")
    return rows


def summary_markdown(rows: list, bar: dict, config_path: str, overrides=()) -> str:
    """How many runs held, and median / worst of each measure over the grid."""
    held = sum(r["passed"] for r in rows)
    worst = {"fa": max, "retained_ratio": min, "fid_ratio": max, "unlearning_s": max}
    setup = f"`{config_path}`" + "".join(f" `{o}`" for o in overrides)
    fid = " / ".join(sorted({r["fid"] for r in rows if r.get("fid")})) or "FID"  # the reference size varies by target
    lines = [f"{setup}: **{held} of {len(rows)} runs hold** FA <= "
             f"{bar['unlearned_fa_max']}, retained accuracy >= {bar['retained_ratio_min']} x base, FID_retained <= "
             f"{bar['fid_ratio_max']} x base; judge and distance signals agree in "
             f"{sum(r['signals_agree'] is True for r in rows)} of {len(rows)}. FID: {fid}; FA with its Wilson "
             "95% interval.", "",
             "| measure | median | worst | worst run |", "|---|---|---|---|"]
    for key, pick in worst.items():
        values = [r[key] for r in rows]
        bad = pick(rows, key=lambda r: r[key])
        lines.append(f"| {key} | {statistics.median(values):.3f} | {_fa(bad) if key == 'fa' else f'{pick(values):.3f}'}"
                     f" | target {bad['target']}, seed {bad['seed']} |")
    stops = [r["stopped_at_step"] for r in rows if r["stopped_at_step"] is not None]
    lines += ["", f"Stopped early in {len(stops)} of {len(rows)} runs"
              + (f" (steps: median {statistics.median(stops):.0f}, max {max(stops)})." if stops else "."), "",
              "| target | seed | FA [95% CI] | retained ratio | FID ratio | stopped at | signals agree | unlearning s | holds |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['seed']} | {_fa(r)} | {r['retained_ratio']:.3f} | "
                     f"{r['fid_ratio']:.3f} | {r['stopped_at_step'] or 'all steps'} | {r['signals_agree']} | "
                     f"{r['unlearning_s']:.1f} | {'yes' if r['passed'] else 'NO'} |")
    return "\n".join(lines)


def _fa(row: dict) -> str:
    """A run's FA with its Wilson interval (when the report has one)."""
    low = row.get("fa_ci95_low")
    return with_interval(row["fa"], None if low is None else [low, row["fa_ci95_high"]])
