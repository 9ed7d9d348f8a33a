"""FID_retained is measured against real digits no model saw: the digits test split (the split every embedded recipe
and the judge hold out, and D_r never holds), less any image equal to a train image; the train-reference FID is
reported beside it, and every table names the features and the reference."""

import dataclasses

import pytest
import torch
from conftest import tiny_ddpm, tiny_overrides

from diffunlearn.config import DataConfig
from diffunlearn.config_loading import load_config
from diffunlearn.data import load_digits_splits
from diffunlearn.data.sets import build_sets
from diffunlearn.errors import UserError
from diffunlearn.evaluation import targets as targets_module
from diffunlearn.evaluation.evaluator import make_evaluator
from diffunlearn.evaluation.judge_loading import load_judge
from diffunlearn.evaluation.report import fid_label
from diffunlearn.evaluation.targets import eval_targets, real_reference
from diffunlearn.recipes.classifier import ClassifierRecipe
from diffunlearn.recipes.ddpm import DDPMRecipe
from diffunlearn.recipes.latent import DiTRecipe
from diffunlearn.recipes.text_to_image import TextToImageRecipe

MAIN = "configs/digits/ddpm_sfron.yaml"


def _rows(images: torch.Tensor) -> set:
    return {tuple(row.tolist()) for row in images.flatten(1)}


def test_the_heldout_reference_shares_no_image_with_the_recipes_or_the_remain_set():
    cfg = load_config(MAIN, ["forget.classes=[4]"])
    assert cfg.eval.fid_reference == "heldout"
    for recipe in (DDPMRecipe, DiTRecipe, TextToImageRecipe, ClassifierRecipe):  # every recipe holds out this split
        assert recipe().split_seed == cfg.data.split_seed, recipe
    assert cfg.data.test_fraction == DataConfig.test_fraction == 0.2  # load_digits_splits' default, the recipes'
    model = tiny_ddpm()
    forget, retained = eval_targets(cfg, model, load_judge(cfg.eval).labels)
    reference = real_reference(cfg, retained)
    train, test = load_digits_splits(cfg.data.split_seed, cfg.data.test_fraction)
    _, remain = build_sets(cfg, model, "memory:tiny")
    assert not _rows(reference) & _rows(train.images), "a held-out image is a train image"
    assert not _rows(reference) & _rows(remain.images), "a held-out image is in D_r"
    kept = test.select_classes([t.label for t in retained])
    assert len(reference) == len(kept.images) > 300  # no duplicates of train images in this split (measured)
    assert torch.equal(real_reference(cfg, retained, "train"), train.select_classes([t.label for t in retained]).images)


def test_a_test_image_equal_to_a_train_image_is_left_out(monkeypatch):
    train, test = load_digits_splits()
    copied = dataclasses.replace(test, images=torch.cat([train.images[:3], test.images[3:]]),
                                 labels=torch.cat([train.labels[:3], test.labels[3:]]))
    monkeypatch.setattr(targets_module, "load_digits_splits", lambda *args: (train, copied))
    cfg = load_config(MAIN)
    retained = eval_targets(cfg, tiny_ddpm(), load_judge(cfg.eval).labels)[1]
    reference = real_reference(cfg, retained)
    labels = {int(t.label) for t in retained}
    expected = sum(int(label) in labels for label in test.labels[3:].tolist())
    assert len(reference) == expected and not _rows(reference) & _rows(train.images)


def test_the_protocol_and_tables_name_the_features_and_the_reference(tiny_ddpm_dir, tiny_classifier_dir):
    cfg = load_config(MAIN, tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir))
    model = tiny_ddpm()
    evaluator = make_evaluator(cfg, model, load_judge(cfg.eval), model, str(tiny_ddpm_dir))
    proto = evaluator.protocol
    assert proto["fid_reference"] == "heldout" and "held-out" in proto["fid_real_source"]
    assert proto["fid_train_real_images"] > proto["fid_real_images"] > 0
    metrics, _ = evaluator(model)
    assert metrics["fid_retained"] != metrics["fid_retained_train"]
    assert fid_label(proto) == f"FID, digits-judge features, {proto['fid_real_images']} held-out images"
    assert fid_label(proto, train=True) == f"FID, digits-judge features, {proto['fid_train_real_images']} train images"


def test_the_old_reference_name_is_refused_with_the_valid_ones():
    with pytest.raises(UserError, match=r"eval.fid_reference 'real'; valid: base, heldout, train"):
        load_config(MAIN, ["eval.fid_reference=real"])
