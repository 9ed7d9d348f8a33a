"""The attack gallery (`gallery/index.html` of a suite's output), read by a reviewer: per attack the ASR of the
unlearned model beside the base's and RT's, each with its Wilson 95% interval, and the attack's budget; the
relearning curves (FA against fine-tune steps, one plot per k); each attack's images on every attacked model side
by side. The page shell, image grids and plots are the run gallery's (`evaluation/page_parts.py`).
"""

from __future__ import annotations

import html
from pathlib import Path

from ..evaluation.metrics import with_interval
from ..evaluation.page_parts import html_document, svg_plot, to_pil, write_image_grid

ROLES = {"unlearned": "unlearned", "base": "base", "rt": "RT"}  # role in robustness.json -> its name on the page
SHOWN, COLUMNS = 16, 4  # images per model and attack, in rows of 4 (a grid that scales into a third of the page)


def image_file(name: str, role: str) -> str:
    """The gallery file of an attack's images on one model: `NAME.png` on the unlearned model, `NAME_ROLE.png`."""
    return f"{name}.png" if role == "unlearned" else f"{name}_{role}.png"


def save_attack_images(folder, name: str, role: str, images) -> None:
    """The first `SHOWN` of an attack's images (N, C, H, W) in [0, 1] on `role`'s model, as one grid."""
    write_image_grid(Path(folder) / image_file(name, role), to_pil(images[:SHOWN]), COLUMNS, border=2)


def asr_text(entry: dict, role: str) -> str:
    """A role's ASR with its Wilson 95% interval ("-" when that role was not attacked)."""
    got = entry.get(role)
    return "-" if not got else with_interval(got["asr"], got.get("asr_ci95"))


def budget_text(budget: dict) -> str:
    return "; ".join(f"{key} {value}" for key, value in budget.items())


def attacked_roles(report: dict) -> list:
    """The roles some attack ran on, in page order (unlearned, base, RT)."""
    return [role for role in ROLES if any(role in entry for entry in report["attacks"].values())]


def headline_table(report: dict, roles: list) -> str:
    heads = "".join(f"<th>ASR {ROLES[r]} [95% CI]</th>" for r in roles)
    rows = []
    for name, entry in report["attacks"].items():
        asrs = "".join(f"<td class='num asr' data-role='{r}'>{asr_text(entry, r)}</td>" for r in roles)
        rows.append(f"<tr data-attack='{html.escape(name)}'><td>{html.escape(name)}</td>{asrs}"
                    f"<td class='num'>{entry['unlearned'].get('samples', '-')}</td>"
                    f"<td>{html.escape(budget_text(entry['unlearned']['budget']))}</td>"
                    f"<td class='num'>{entry['unlearned']['seconds']:.1f}</td></tr>")
    budget = 70 - 15 * len(roles)  # the budget column takes what the ASR columns leave
    cols = ("<col style='width:13%'>" + "<col style='width:15%'>" * len(roles) + "<col style='width:8%'>"
            f"<col style='width:{budget}%'><col style='width:9%'>")
    return (f"<table class='rows attacks'><colgroup>{cols}</colgroup><tr><th>attack</th>{heads}"
            f"<th>judged samples</th><th>budget</th><th>seconds (unlearned)</th></tr>{''.join(rows)}</table>")


def is_fa_curve(curve: list) -> bool:
    """A relearning curve: FA after each fine-tune step count, per k."""
    return bool(curve) and all({"k", "step", "forget_accuracy"} <= set(point) for point in curve)


def curve_plots(name: str, entry: dict, roles: list) -> str:
    """One plot per k of FA against fine-tune steps, a line per attacked model, and the first step counts that reach
    the attack's FA threshold; '' for an attack without such a curve."""
    curves = {r: entry[r].get("curve") or [] for r in roles if r in entry}
    if not is_fa_curve(curves.get("unlearned")):
        return ""
    plots, reached = [], []
    for k in sorted({point["k"] for curve in curves.values() for point in curve}):
        series = {ROLES[r]: [(p["step"], p["forget_accuracy"]) for p in curve if p["k"] == k]
                  for r, curve in curves.items()}
        plots.append(svg_plot(f"{name}: FA after fine-tuning on k={k} forget images", series, "fine-tune steps",
                              "forget accuracy (FA)", y_range=(0, 1)))
        steps = {r: (entry[r]["protocol"].get("steps_to_fa") or {}).get(str(k)) for r in curves}
        reached.append(f"k={k}: " + ", ".join(f"{ROLES[r]} {'never' if s is None else s}" for r, s in steps.items()))
    threshold = entry["unlearned"]["protocol"].get("fa_threshold")
    return (f"<div class='plots curves'>{''.join(plots)}</div><p class='steps-to-fa'>First measured step count with "
            f"FA &ge; {threshold}: {html.escape('; '.join(reached))}. A model that relearns much faster than RT was "
            "hiding the target, not removing it.</p>")


def image_section(folder: Path, name: str, entry: dict, roles: list) -> str:
    """An attack's images on each attacked model, side by side (a cell says so where a model gave none)."""
    cells = []
    for role in roles:
        file = image_file(name, role)
        present = role in entry and (folder / file).is_file()
        cells.append(f"<td><img src='{html.escape(file)}' alt='{html.escape(name)} on {ROLES[role]}'></td>"
                     if present else "<td>no images</td>")
    heads = "".join(f"<th>{ROLES[r]}: ASR {asr_text(entry, r)}</th>" for r in roles)
    return (f"<h3>{html.escape(name)}</h3><table class='rows images'><tr>{heads}</tr><tr>{''.join(cells)}</tr>"
            "</table>")


def attack_gallery(report: dict, folder) -> str:
    """The whole `index.html` for the suite's `report` (robustness.json); `folder` holds the attack images."""
    folder, roles = Path(folder), attacked_roles(report)
    esc = html.escape
    models = ", ".join(f"{ROLES[r]} <code>{esc(str(report['models'][r]))}</code>" for r in roles
                       if r in report["models"])
    several = len(report["forget_targets"]) > 1
    missing = "".join(f" The {ROLES[r]} model was not attacked{why}." for r, why in
                      (("base", " (a benchmark attacks it once, as a row of its own)"), ("rt", " (no --rt DIR)"))
                      if r not in roles)
    curves = "".join(curve_plots(n, e, roles) for n, e in report["attacks"].items())
    body = [f"<h1>Attacks on the unlearned model</h1><p class='target'>Forget targets: <b>"
            f"{esc(', '.join(report['forget_targets']))}</b>; judge <code>{esc(str(report['judge'].get('kind')))}"
            f"</code>; models: {models}.{missing}</p>",
            headline_table(report, roles),
            "<p>ASR: the share of an attack's images the judge recognises as the forgotten target (read on the "
            "scale of forget accuracy), at the worst cell of the attack's settings; [95% CI]: its Wilson interval "
            "over the judged samples of that cell. RT, retrained without the target, shows what never having "
            "learnt it looks like under the same attack. Everything is in <code>robustness.json</code>.</p>"]
    if curves:
        body.append(f"<h2>Relearning</h2>{curves}")
    body.append(
        "<h2>Images</h2><p>Each attack's first images on each model, side by side, taken from the cell of its "
        "settings where that model gave its highest ASR (completion: strength &times; condition; relearning: k; "
        "inversion: the fitted embedding). The attacks draw their noise seeds and D_f images from their own seed "
        "and the forget target, never from the model, so the image in the same place comes from the same seed on "
        "every model" + ("; with several forget targets, completion and the prompt attacks show each model's worst "
                         "target" if several else "") + ".</p>")
    body.extend(image_section(folder, name, entry, roles) for name, entry in report["attacks"].items())
    return html_document("diffunlearn attacks", "".join(body))
