"""The gallery pages in a real browser (headless Chromium, Debian's `chromium` package: a declared system dependency
that `make install` and `.ci/run` install; no test installs anything): at 1000 px wide nothing overflows
horizontally and every image loads; the run gallery opens with the headline numbers and the protocol, the attack
gallery shows every model's ASR with its interval and the relearning curve."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import tiny_ddpm
from PIL import Image

import diffunlearn
from diffunlearn.evaluation.metrics import with_interval


@pytest.fixture(scope="session")
def chromium():
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("headless Chromium is needed for the gallery check: run `make install` as root, or "
                    "`apt-get install -y chromium`")
    return path


def browse(chromium, page, *args):
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1000,1400",
                           "--virtual-time-budget=5000", *args, f"file://{page}"], capture_output=True, text=True,
                          timeout=120)
    return done.stdout


def test_gallery_fits_1000px_loads_its_images_and_opens_with_the_numbers(chromium, tiny_classifier_dir, tmp_path):
    pipe = tiny_ddpm().pipeline
    result = diffunlearn.unlearn(pipe, forget=[7], steps=2, progress=False, output=tmp_path / "run",
                                 config="configs/digits/ddpm_sfron.yaml",
                                 overrides={"stop.check_every": 0, "method.mask_batches": 2, "train.batch_size": 8,
                                            "eval.forget_samples": 8, "eval.retained_samples_per_class": 8,
                                            "eval.num_inference_steps": 2, "eval.gallery_per_class": 8,
                                            "eval.classifier": str(tiny_classifier_dir)})
    page = (tmp_path / "run" / "gallery" / "index.html").resolve()
    dom = browse(chromium, page, "--dump-dom")
    assert 'data-overflow="false"' in dom, "the page overflows horizontally at 1000 px"
    assert 'data-images-loaded="true"' in dom
    fa = f"{result.report['unlearned']['forget_accuracy']:.4f}"
    head = dom[:dom.index("class=\"rows\"")]  # before the image table: numbers, protocol, plots
    assert "forget accuracy" in head and fa in head and "Protocol:" in head and "<svg" in head
    assert re.search(r"ddim 2 steps, guidance 2\.0", head)
    shot = tmp_path / "shot.png"
    browse(chromium, page, f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape[1] == 1000 and pixels.std() > 10, "the screenshot is blank"


def test_attack_gallery_fits_1000px_and_shows_the_asrs_with_intervals_and_the_relearning_curve(
        chromium, attacked_suite, tmp_path):
    page = (attacked_suite / "gallery" / "index.html").resolve()
    dom = browse(chromium, page, "--dump-dom")
    assert 'data-overflow="false"' in dom, "the attack gallery overflows horizontally at 1000 px"
    assert 'data-images-loaded="true"' in dom
    report = json.loads((attacked_suite / "robustness.json").read_text())
    for name, entry in report["attacks"].items():
        for role in ("unlearned", "base", "rt"):
            assert with_interval(entry[role]["asr"], entry[role]["asr_ci95"]) in dom, (name, role)
    curves = re.findall(r"<svg.*?</svg>", dom, re.S)
    assert len(curves) == 2 and all(len(re.findall(r'<polyline class="series"', c)) == 3 for c in curves)
    wide = tmp_path / "wide.html"  # the check can fail: a block as wide as the old page's strip of 16 images
    wide.write_text(page.read_text().replace("<h1>", "<div style='width:1100px'>strip</div><h1>", 1))
    assert 'data-overflow="true"' in browse(chromium, wide, "--dump-dom")
