"""The gallery page's head: the headline numbers with their protocol, how the run stopped, and two plots (the
losses per step, and the in-loop forget / retained estimates per check) drawn as inline SVG (no plotting library).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

COLORS = ("#c0392b", "#2471a3", "#229954", "#7d3c98")


def read_losses(path) -> list:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def svg_plot(title: str, series: dict, width: int = 440, height: int = 200) -> str:
    """Line plot of {name: [(x, y), ...]} with min / max labels on both axes; '' when there is nothing to draw."""
    points = [p for values in series.values() for p in values]
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top, bottom = 50, 10, 24, 30

    def at(x, y):
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

    parts = [f"<svg viewBox='0 0 {width} {height}' width='{width}' role='img' aria-label='{html.escape(title)}'>",
             f"<text x='{left}' y='15' font-size='13'>{html.escape(title)}</text>",
             f"<rect x='{left}' y='{top}' width='{width - left - right}' height='{height - top - bottom}' "
             "fill='none' stroke='#999'/>",
             f"<text x='4' y='{top + 10}' font-size='10'>{y1:.3g}</text>",
             f"<text x='4' y='{height - bottom}' font-size='10'>{y0:.3g}</text>",
             f"<text x='{left}' y='{height - 12}' font-size='10'>step {x0:g}</text>",
             f"<text x='{width - right - 60}' y='{height - 12}' font-size='10'>step {x1:g}</text>"]
    for i, (name, values) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (at(*p) for p in values))
        parts.append(f"<polyline fill='none' stroke='{color}' stroke-width='1.5' points='{path}'/>")
        parts.append(f"<text x='{left + 8 + 150 * i}' y='{height - 2}' font-size='10' fill='{color}'>"
                     f"{html.escape(name)}</text>")
    return "".join(parts) + "</svg>"


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

        rows = "".join(f"<tr><td>{name}</td><td class='num'>{cell(base, key)}</td><td class='num'>{cell(unl, key)}"
                       "</td></tr>" for key, name in (("forget_accuracy", "forget accuracy (lower: forgotten)"),
                                                    ("retained_accuracy", "retained accuracy"),
                                                    ("fid_retained", "FID of retained targets")))
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
                    "retained FID / base": [(c["step"], c["fid_ratio"]) for c in checks]}
    plots = svg_plot("losses per step", {k: v for k, v in loss_series.items() if v})
    plots += svg_plot("in-loop checks", {k: v for k, v in check_series.items() if v})
    stop = f"<p class='stop'>{html.escape(stop_text)}.</p>" if stop_text else ""
    return headline(report) + stop + (f"<div class='plots'>{plots}</div>" if plots else "")
