"""The acceptance grid: targets become config overrides, finished runs are read back, the summary tells the
distribution (how many held, median and worst)."""

import json

import pytest

from diffunlearn.benchmarks.acceptance import grid_row, summary_markdown, target_overrides
from diffunlearn.config_loading import load_config
from diffunlearn.errors import UserError
from diffunlearn.evaluation.criteria import CLASS_FORGETTING

DDPM, SD = "configs/digits/ddpm_sfron.yaml", "configs/digits/sd_sfron.yaml"


def test_class_and_concept_targets_become_valid_overrides():
    assert target_overrides(DDPM, "3") == ["forget.classes=[3]"]
    cfg = load_config(SD, target_overrides(SD, "three:eight"))
    assert cfg.forget.prompts == ["a handwritten digit three"] and cfg.forget.anchors == ["a handwritten digit eight"]
    assert cfg.forget.concept == "three" and len(cfg.forget.remain_prompts) == 8
    assert not {"a handwritten digit three", "a handwritten digit eight"} & set(cfg.forget.remain_prompts)


@pytest.mark.parametrize("config, target", [(DDPM, "seven"), (SD, "7"), (SD, "seven:seven"), (SD, "seven:ten")])
def test_bad_targets_are_one_line_errors(config, target):
    with pytest.raises(UserError, match="target") as err:
        target_overrides(config, target)
    assert "\n" not in str(err.value)


def _report(fa, ra, fid, stopped=40, agree=True):
    return {"base": {"forget_accuracy": 1.0, "retained_accuracy": 1.0, "fid_retained": 1.0},
            "unlearned": {"forget_accuracy": fa, "retained_accuracy": ra, "fid_retained": fid,
                          "forget_accuracy_ci95": [max(0.0, fa - 0.02), fa + 0.04]},
            "protocol": {"fid_features": "digits-judge-features", "fid_reference": "heldout", "fid_real_images": 324},
            "stop": {"stopped_at_step": stopped}, "signals": {"agree": agree},
            "timing": {"unlearning": 10.0, "stop_checks": 2.0}}


def test_rows_pass_only_within_every_bound_and_the_summary_names_the_worst_run():
    rows = [grid_row("7", 0, _report(0.0, 1.0, 0.9), 30.0, CLASS_FORGETTING),
            grid_row("7", 1, _report(0.0, 0.99, 1.3, stopped=None), 40.0, CLASS_FORGETTING),
            grid_row("3", 0, _report(0.06, 1.0, 1.0, agree=False), 35.0, CLASS_FORGETTING)]
    assert [r["passed"] for r in rows] == [True, False, False]
    assert rows[0]["unlearning_s"] == 12.0
    md = summary_markdown(rows, CLASS_FORGETTING, DDPM)
    assert "**1 of 3 runs hold**" in md and "agree in 2 of 3" in md
    assert "| fid_ratio | 1.000 | 1.300 | target 7, seed 1 |" in md
    assert "| fa | 0.000 | 0.060 [0.040, 0.100] | target 3, seed 0 |" in md  # the worst run with its interval
    assert "FID: FID, digits-judge features, 324 held-out images" in md
    assert "| 7 | 1 | 0.000 [0.000, 0.040] |" in md
    assert "Stopped early in 2 of 3 runs" in md
    json.dumps(rows)  # the rows are what results.csv holds
