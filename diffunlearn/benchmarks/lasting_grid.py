"""Lasting-forgetting grid: run configs (plain SFR-on, the lasting option...) over targets x seeds, each unlearned
model attacked beside RT (class targets: `--rt auto`, the base recipe without the target), and how far each one's
relearning curve, completion and inversion are from RT's, worst case over the grid.

    python eval/lasting_grid.py --configs configs/digits/ddpm_sfron.yaml configs/digits/ddpm_lasting.yaml \
        --targets 7 1 2 5 8 --seeds 30 31 --output out/lasting/ddpm

Each config's unlearning runs are `acceptance.run_grid`'s (read back when finished); each suite is read back when
its identity matches. Bars (issue 33): relearning FA within `slack` (0.10) of RT's at every measured step and k,
completion's worst cell <= RT's + 0.05, inversion ASR <= 0.05, and the acceptance bars (FA, retained, FID).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .acceptance import run_grid

ATTACKS = ("relearning", "completion", "inversion")
COLUMNS = ("config", "target", "seed", "fa", "retained_ratio", "fid_ratio", "unlearning_s", "relearn_excess",
           "relearn_worst_point", "steps_to_fa", "rt_steps_to_fa", "completion", "rt_completion", "inversion",
           "rt_inversion", "passed_forgetting", "passed_lasting")


def relearning_excess(entry: dict) -> tuple:
    """(largest FA(unlearned) - FA(RT) over the measured (k, step) points, that point as 'k=K step=S')."""
    rt = {(p["k"], p["step"]): p["forget_accuracy"] for p in entry["rt"]["curve"]}
    gaps = [(p["forget_accuracy"] - rt[(p["k"], p["step"])], f"k={p['k']} step={p['step']}")
            for p in entry["unlearned"]["curve"] if (p["k"], p["step"]) in rt]
    return max(gaps)


def lasting_row(config: str, row: dict, suite: dict, slack: float) -> dict:
    attacks = suite["attacks"]
    relearning = attacks.get("relearning", {})
    excess, point = relearning_excess(relearning) if "rt" in relearning else (None, None)
    completion, inversion = attacks.get("completion", {}), attacks.get("inversion", {})
    protocol = lambda role: relearning.get(role, {}).get("protocol", {}).get("steps_to_fa")  # noqa: E731
    lasting = [excess is not None and excess <= slack + 1e-9,
               completion.get("rt_asr") is not None and completion["asr"] <= completion["rt_asr"] + 0.05 + 1e-9,
               inversion.get("asr") is not None and inversion["asr"] <= 0.05 + 1e-9]
    return {"config": config, "target": row["target"], "seed": row["seed"], "fa": row["fa"],
            "retained_ratio": row["retained_ratio"], "fid_ratio": row["fid_ratio"], "unlearning_s": row["unlearning_s"],
            "relearn_excess": excess, "relearn_worst_point": point, "steps_to_fa": json.dumps(protocol("unlearned")),
            "rt_steps_to_fa": json.dumps(protocol("rt")), "completion": completion.get("asr"),
            "rt_completion": completion.get("rt_asr"), "inversion": inversion.get("asr"),
            "rt_inversion": inversion.get("rt_asr"), "passed_forgetting": row["passed"], "passed_lasting": all(lasting)}


def run_lasting_grid(configs, targets, seeds, output, attacks=ATTACKS, slack: float = 0.10, overrides=(),
                     rt: str = "auto", progress=print) -> list:
    """Every (config, target, seed): the unlearning run, its attack suite beside RT (`rt`: a folder, or auto: the
    base recipe without the target); writes `results.csv` and `summary.md` under `output`; returns the rows.
    `overrides`: run-config overrides and `attack.NAME.key=value` settings for every run."""
    from ..robustness.suite import suite_result

    progress = progress or (lambda _: None)
    run_overrides = [o for o in overrides if not o.startswith("attack.")]
    out, rows = Path(output), []
    for config in configs:
        name = Path(config).stem
        for row in run_grid(config, targets, seeds, out / name, run_overrides, progress=progress):
            folder = out / name / f"{row['target'].replace(':', '_to_')}_seed{row['seed']}"
            suite = suite_result(None, folder, f"{folder}_attacks", list(attacks), overrides, rt_path=rt,
                                 with_base=False, progress=progress)
            rows.append(lasting_row(name, row, suite, slack))
            progress(json.dumps(rows[-1]))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.md").write_text(summary_markdown(rows, slack) + "\n")
    return rows


def summary_markdown(rows: list, slack: float) -> str:
    """Per config: runs that hold, worst relearning excess over RT, worst completion gap, worst inversion, and the
    unlearning time against the first config's on the same (target, seed)."""
    first = rows[0]["config"] if rows else None
    base_time = {(r["target"], r["seed"]): r["unlearning_s"] for r in rows if r["config"] == first}
    lines = [f"Relearning bar: FA within {slack} of RT's at every measured (k, step); completion <= RT + 0.05; "
             "inversion <= 0.05. Time ratio: unlearning (with checks) against the first config's on the same "
             "target and seed.", "",
             "| config | forgetting holds | lasting holds | worst relearning excess (point) | worst completion - RT | "
             "worst inversion | worst FID ratio | time ratio (max) |", "|---|---|---|---|---|---|---|---|"]
    for config in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == config]
        worst = max(mine, key=lambda r: -1 if r["relearn_excess"] is None else r["relearn_excess"])
        gaps = [r["completion"] - r["rt_completion"] for r in mine if r["rt_completion"] is not None]
        ratio = max(r["unlearning_s"] / base_time[(r["target"], r["seed"])] for r in mine)
        lines.append(f"| {config} | {sum(r['passed_forgetting'] for r in mine)} of {len(mine)} | "
                     f"{sum(r['passed_lasting'] for r in mine)} of {len(mine)} | "
                     f"{_num(worst['relearn_excess'])} ({worst['relearn_worst_point']}, target {worst['target']} "
                     f"seed {worst['seed']}) | {_num(max(gaps) if gaps else None)} | "
                     f"{_num(max(r['inversion'] or 0 for r in mine))} | {max(r['fid_ratio'] for r in mine):.3f} | "
                     f"{ratio:.2f} |")
    lines += ["", "| config | target | seed | FA | FID ratio | relearning excess | steps to FA 0.5 (RT) | completion "
              "(RT) | inversion | unlearning s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['target']} | {r['seed']} | {r['fa']:.3f} | {r['fid_ratio']:.3f} | "
                     f"{_num(r['relearn_excess'])} | {r['steps_to_fa']} ({r['rt_steps_to_fa']}) | "
                     f"{_num(r['completion'])} ({_num(r['rt_completion'])}) | {_num(r['inversion'])} | "
                     f"{r['unlearning_s']:.1f} |")
    return "\n".join(lines)


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"

