"""The gallery page's head: the headline numbers with their protocol, how the run stopped, and two plots (the
losses per step, and the in-loop forget / retained estimates per check) drawn as inline SVG (`page_parts.svg_plot`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .page_parts import svg_plot
from .report import metric_rows


def read_losses(path) -> list:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def headline(report: dict) -> str:
    """Table of base vs unlearned metrics, the protocol and how the run ended."""
    base, unl, proto = report.get("base"), report.get("unlearned"), report.get("protocol")
    target = report.get("forget_prompts") or report.get("forget_classes")
    out = [f"<p class='target'>Forgotten: <b>{html.escape(', '.join(map(str, target or [])))}</b> "
           f"with <code>{html.escape(str(report.get('method')))}</code> on <code>"
           f"{html.escape(str(report.get('base_model')))}</code>.</p>"]
    if base and unl:
        def cell(side, key):  # accuracies with their Wilson 95% interval
            ci = side.get(f"{key}_ci95")
            return f"{side[key]:.4f}" + (f"<br><small>[{ci[0]:.3f}, {ci[1]:.3f}]</small>" if ci else "")

        rows = "".join(f"<tr><td>{html.escape(name)}</td><td class='num'>{cell(base, key)}</td><td class='num'>"
                       f"{cell(unl, key)}</td></tr>" for key, name in metric_rows(base, unl, proto))
        out.append("<table class='headline'><tr><th>metric</th><th>base [95% CI]</th><th>unlearned [95% CI]</th>"
                   f"</tr>{rows}</table>")
    if proto:
        out.append(f"<p class='protocol'>Protocol: {proto['forget_samples_per_target']} samples per forgotten "
                   f"target, {proto['retained_samples_per_target']} per retained target, {proto['sampler']} "
                   f"{proto['num_inference_steps']} steps, guidance {proto['guidance_scale']}, eval seed "
                   f"{proto['eval_seed']}; judge {html.escape(str(proto['judge'].get('kind')))}; FID on "
                   f"{html.escape(str(proto['fid_features']))} features against {proto['fid_real_images']} "
                   f"images ({html.escape(str(proto['fid_real_source']))}). Everything in report.json.</p>")
    return "".join(out)


def page_head(report: dict, losses_path, stop_text: str = "") -> str:
    """Headline, stop sentence and plots for the top of index.html."""
    losses = read_losses(losses_path)
    loss_series = {key: [(r["step"], r[key]) for r in losses if key in r]
                   for key in ("forget_loss", "remain_loss", "repair_loss")}
    checks = (report.get("stop") or {}).get("checks") or []
    check_series = {"forget estimate": [(c["step"], c["forget_accuracy"]) for c in checks],
                    "retained FID / base": [(c["step"], c["fid_ratio"]) for c in checks if c["fid_ratio"] is not None]}
    plots = svg_plot("losses per step", {k: v for k, v in loss_series.items() if v}, y_label="loss")
    plots += svg_plot("in-loop checks", {k: v for k, v in check_series.items() if v}, y_label="value")
    stop = f"<p class='stop'>{html.escape(stop_text)}.</p>" if stop_text else ""
    return headline(report) + stop + (f"<div class='plots'>{plots}</div>" if plots else "")
