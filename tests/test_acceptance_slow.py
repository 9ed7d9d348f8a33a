"""Slow: the README's main job on the embedded digits DDPM meets the class-forgetting bar (run in CI)."""

import json

import pytest
from diffusers import UNet2DModel

from diffunlearn.commands.cli import main
from diffunlearn.evaluation.criteria import check_class_forgetting

pytestmark = pytest.mark.slow


def test_main_job_forgets_digit_seven_and_keeps_the_rest(tmp_path):
    out = tmp_path / "seven"
    main(["unlearn", "configs/digits/ddpm_sfron.yaml", "--output", str(out)])
    report = json.loads((out / "report.json").read_text())
    verdict = check_class_forgetting(report)
    assert all(passed for _, passed in verdict.values()), verdict
    UNet2DModel.from_pretrained(out, subfolder="unet")
