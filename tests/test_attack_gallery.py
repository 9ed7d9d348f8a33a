"""The attack gallery (`gallery/index.html` of a suite) a reviewer reads: a row per attack with each attacked model's
ASR, its Wilson 95% interval and the attack's budget; the relearning curve as one SVG plot per k; each attack's
images on every model side by side. Its layout in a real browser: tests/test_gallery_browser.py."""

import html
import json
import re

from PIL import Image

from diffunlearn.evaluation.metrics import with_interval
from diffunlearn.robustness.gallery import attack_gallery, budget_text

ROLES = ("unlearned", "base", "rt")


def _suite(folder):
    return json.loads((folder / "robustness.json").read_text()), (folder / "gallery" / "index.html").read_text()


def test_a_row_per_attack_holds_every_models_asr_with_its_interval_and_the_budget(attacked_suite):
    report, page = _suite(attacked_suite)
    assert sorted(report["attacks"]) == ["completion", "inversion", "relearning"]
    for name, entry in report["attacks"].items():
        row = re.search(rf"<tr data-attack='{name}'>(.*?)</tr>", page).group(1)
        for role in ROLES:
            asr = with_interval(entry[role]["asr"], entry[role]["asr_ci95"])
            assert f"data-role='{role}'>{asr}</td>" in row, (name, role)
        assert html.escape(budget_text(entry["unlearned"]["budget"])) in row
    inversion = re.search(r"<tr data-attack='inversion'>(.*?)</tr>", page).group(1)
    # the embedded base still makes a seven from the inverted embedding, 4 of 4 samples; the random-weight model never
    assert "data-role='base'>1.000 [0.510, 1.000]<" in inversion
    assert "data-role='unlearned'>0.000 [0.000, 0.490]<" in inversion
    assert "k [2, 4]; max_steps 2" in page


def test_the_relearning_curve_is_one_plot_per_k_with_a_line_per_model(attacked_suite):
    report, page = _suite(attacked_suite)
    plots = re.findall(r"<svg.*?</svg>", page)
    assert [re.search(r"k=(\d+)", p).group(1) for p in plots] == ["2", "4"]
    for plot in plots:
        assert "fine-tune steps" in plot and "forget accuracy (FA)" in plot
        lines = dict(re.findall(r"data-name='([^']+)'[^>]*points='([^']+)'", plot))
        assert sorted(lines) == ["RT", "base", "unlearned"]
        ys = {name: [float(xy.split(",")[1]) for xy in points.split()] for name, points in lines.items()}
        assert all(len(y) == 3 for y in ys.values())  # FA after 0, 1 and 2 steps
        assert max(ys["base"]) < min(ys["unlearned"]), "the base (FA 1) is drawn above the unlearned model (FA 0)"
        assert all(f">{name}</text>" in plot for name in lines)  # the legend
    assert "k=2: unlearned never, base 0, RT never" in page


def test_each_attacks_images_on_every_model_are_side_by_side(attacked_suite):
    report, page = _suite(attacked_suite)
    for name in report["attacks"]:
        files = [f"{name}.png", f"{name}_base.png", f"{name}_rt.png"]
        section = page[page.index(f"<h3>{name}</h3>"):]
        section = section[:section.index("</table>")]
        assert re.findall(r"<img src='([^']+)'", section) == files
        for file in files:  # 4 samples, one row of 4 cells of 64 px with a 2 px white border
            assert Image.open(attacked_suite / "gallery" / file).size == (4 * 68, 68)


def test_a_suite_without_base_rt_or_relearning_says_so(tmp_path):
    entry = {"asr": 0.25, "asr_ci95": [0.046, 0.699], "samples": 4, "budget": {"images_per_cell": 4}, "seconds": 1.0,
             "protocol": {}, "curve": [{"strength": 0.5, "asr": 0.25}]}
    report = {"models": {"unlearned": "<local>/m"}, "forget_targets": ["seven"], "judge": {"kind": "digits"},
              "attacks": {"completion": {"unlearned": entry}}}
    page = attack_gallery(report, tmp_path)
    assert "ASR base" not in page and "ASR RT" not in page and "<svg" not in page
    assert "The base model was not attacked" in page and "The RT model was not attacked (no --rt DIR)" in page
    assert "0.250 [0.046, 0.699]" in page and "<td>no images</td>" in page and "<img" not in page
