"""The README's Python snippet, exactly as shown, on the embedded DDPM, DiT and SD models (full runs: slow)."""

import pytest
from test_api import weights_hash

import diffunlearn

pytestmark = pytest.mark.slow


def check(pipe, result, before):
    assert type(result.pipeline) is type(pipe) and weights_hash(pipe) == before
    unl = result.report["unlearned"]
    assert unl["forget_accuracy"] <= 0.10 and result.report["stop"]["stopped_at_step"] is not None


def test_readme_snippet_on_the_embedded_ddpm(tmp_path):
    pipe = diffunlearn.from_pretrained("embedded:digits/ddpm")
    before = weights_hash(pipe)
    result = diffunlearn.unlearn(pipe, forget=[7], method="sfr_on", seed=0)
    images = result.pipeline(class_labels=[3, 7], guidance_scale=2.0).images
    assert len(images) == 2
    check(pipe, result, before)
    result.save_pretrained(tmp_path / "seven")
    assert type(diffunlearn.from_pretrained(str(tmp_path / "seven"))) is type(pipe)
    metrics = diffunlearn.evaluate(result.pipeline, forget=[7])["metrics"]
    assert metrics["forget_accuracy"] == pytest.approx(result.report["unlearned"]["forget_accuracy"], abs=1e-6)


def test_readme_snippet_on_the_embedded_dit():
    dit = diffunlearn.from_pretrained("embedded:digits/dit")
    before = weights_hash(dit)
    check(dit, diffunlearn.unlearn(dit, forget=["seven"], steps=200), before)


def test_readme_snippet_on_the_embedded_sd():
    sd = diffunlearn.from_pretrained("embedded:digits/sd")
    before = weights_hash(sd)
    check(sd, diffunlearn.unlearn(sd, forget="a handwritten digit seven", anchor="a handwritten digit one"), before)
