"""Classifier unlearning: the `classifier` model family on the shared engine (FT, RL, GA, SFR-on through the
Trainer), the cross-entropy curvature of Fast-NTK against an autograd Newton step, the benchmark's scenarios,
config checks, acceptance arithmetic and outputs, and the shipped base classifier's recorded head init."""

import csv
from dataclasses import replace

import pytest
import torch
from torch import nn

from diffunlearn.benchmarks.base_model import HEAD_INIT_FILE, head_init, load_head_init, load_recipe
from diffunlearn.benchmarks.classifier import (EngineRun, acceptance, engine_run, load_benchmark_config, mean_rows,
                                               run_benchmark, scenario_tables, write_outputs)
from diffunlearn.benchmarks.scenarios import ScenarioConfig, make_split, random_forget_split
from diffunlearn.data import load_digits_splits
from diffunlearn.errors import UserError
from diffunlearn.models.digits_classifier import DigitsClassifier
from diffunlearn.models.image_classifier import ImageClassifier
from diffunlearn.ntk.unlearn import fast_ntk_scrub
from diffunlearn.registry import get_family, get_method
from diffunlearn.training.trainer import Trainer

BENCH_CONFIG = "configs/digits/classifier_benchmark.yaml"
RECIPE = "configs/recipes/digits_classifier_plain.yaml"


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits()


def tiny_classifier(seed=0):
    torch.manual_seed(seed)
    return ImageClassifier(DigitsClassifier(channels=(4, 8, 8)).eval())


def tiny_transformers():
    from transformers import AutoModelForImageClassification, ResNetConfig

    torch.manual_seed(0)
    config = ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=10)
    return AutoModelForImageClassification.from_config(config).eval()


def engine_trainer(model, method, tmp_path, digits, method_overrides=None, forget_classes=(7,), **train):
    from diffunlearn.config_loading import validate

    cfg = load_benchmark_config(BENCH_CONFIG)
    run = engine_run(cfg, method, forget_classes)
    run = EngineRun(validate(get_method(method).config_cls(), {"name": method, **(method_overrides or {})}),
                    replace(run.train, batch_size=16, **train), 0, run.forget)
    forget, retain = digits[0].forget_remain(list(forget_classes))
    return Trainer(run, model, get_method(method), forget, retain, tmp_path, progress=False)


def batch_loss(trainer, batch):
    with torch.no_grad():
        return trainer.model.training_losses(batch).mean().item()


# --- the classifier family ---------------------------------------------------------------------------------------
def test_family_is_registered_and_training_losses_are_per_sample_cross_entropy(digits):
    assert get_family("classifier") is ImageClassifier
    model = tiny_classifier()
    images, labels = digits[0].images[:6], digits[0].labels[:6]
    batch = {"pixel_values": images * 2 - 1, "labels": labels}
    expected = nn.functional.cross_entropy(model.network(images), labels, reduction="none")
    losses = model.training_losses(batch)
    assert losses.shape == (6,)
    torch.testing.assert_close(losses, expected)
    ignored = model.training_losses(batch, generator=torch.Generator().manual_seed(1), cond_drop=0.5,
                                    guidance_scale=2.0, antithetic=True, shard=(0, 1))
    torch.testing.assert_close(ignored, expected)
    other = (labels + 1) % 10
    torch.testing.assert_close(model.training_losses(batch, cond=other),
                               nn.functional.cross_entropy(model.network(images), other, reduction="none"))


@pytest.mark.parametrize("kind", ["digits", "transformers"])
def test_save_and_load_round_trip(tmp_path, digits, kind):
    model = tiny_classifier() if kind == "digits" else ImageClassifier(tiny_transformers(), "signed")
    model.save_pretrained(tmp_path)
    loaded = ImageClassifier.from_pretrained(str(tmp_path))
    assert (loaded.pixel_range, loaded.num_classes) == (model.pixel_range, 10)
    batch = {"pixel_values": digits[0].images[:4] * 2 - 1, "labels": digits[0].labels[:4]}
    torch.testing.assert_close(loaded.training_losses(batch), model.training_losses(batch))


def test_loading_a_folder_that_is_no_classifier_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="has no config.json"):
        ImageClassifier.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(UserError, match="names neither DigitsClassifier"):
        ImageClassifier.from_pretrained(str(tmp_path))
    with pytest.raises(UserError, match="unknown pixel_range 'bytes'"):
        ImageClassifier(nn.Linear(4, 3), "bytes")


def test_relabelled_batch_gets_other_classes_only_and_all_of_them():
    model = tiny_classifier()
    labels = torch.arange(2000) % 10
    out = model.relabelled({"labels": labels, "pixel_values": torch.zeros(2000, 1, 8, 8)},
                           torch.Generator().manual_seed(0))["labels"]
    assert not bool((out == labels).any()) and int(out.min()) == 0 and int(out.max()) == 9
    assert torch.bincount(out[labels == 3], minlength=10)[3] == 0
    assert (torch.bincount(out[labels == 3], minlength=10) > 0).sum() == 9


# --- methods on the engine ---------------------------------------------------------------------------------------
def test_ft_step_lowers_the_remain_loss_and_ignores_the_forget_set(tmp_path, digits):
    trainer = engine_trainer(tiny_classifier(), "ft", tmp_path, digits, lr=0.05, momentum=0.0)
    batch = trainer.remain_batch(0)
    before = batch_loss(trainer, batch)
    logs = trainer.method.training_step(0)
    assert set(logs) == {"remain_loss"} and batch_loss(trainer, batch) < before


def test_rl_on_a_classifier_fits_the_forget_set_to_other_labels(tmp_path, digits):
    trainer = engine_trainer(tiny_classifier(), "rl", tmp_path, digits, {"remain_weight": 0.0, "clip": None},
                             lr=0.05, momentum=0.0)
    forget = trainer.forget_batch(0)
    relabelled = trainer.model.relabelled(forget, trainer.generator(0, 3))
    assert bool((forget["labels"] == 7).all()) and not bool((relabelled["labels"] == 7).any())
    before = batch_loss(trainer, relabelled)
    trainer.method.training_step(0)
    assert batch_loss(trainer, relabelled) < before


def test_sfr_on_forget_step_on_a_classifier_raises_the_forget_loss_and_respects_the_mask(tmp_path, digits):
    settings = {"forget_every": 1, "alpha": 1.0, "remain": False, "mask_batches": 2, "mask_guidance_scale": None,
                "mask_grad_clip": None, "forget_clip": None}
    trainer = engine_trainer(tiny_classifier(), "sfr_on", tmp_path, digits, settings, lr=0.05, momentum=0.0)
    info = trainer.method.setup()
    assert 0.0 < info["mask_density"] < 1.0
    batch = trainer.forget_batch(0)
    before, weights = batch_loss(trainer, batch), {n: p.detach().clone() for n, p in trainer.params}
    trainer.method.training_step(0)
    assert batch_loss(trainer, batch) > before
    for name, p in trainer.params:
        frozen = ~trainer.method.mask.tensors[name]
        assert torch.equal(p.detach()[frozen], weights[name][frozen]), name


def test_ga_trains_a_classifier_through_the_whole_loop(tmp_path, digits):
    trainer = engine_trainer(tiny_classifier(), "ga", tmp_path, digits, steps=3, lr=0.05)
    batch = trainer.forget_batch(0)
    before = batch_loss(trainer, batch)
    timing = trainer.train()
    assert timing["first_step"] == 0 and (tmp_path / "losses.jsonl").is_file()
    assert not trainer.model.network.training and batch_loss(trainer, batch) > before


# --- Fast-NTK: the cross-entropy curvature -----------------------------------------------------------------------
class FeatureClassifier(nn.Module):
    def __init__(self, features=6, classes=4):
        super().__init__()
        self.backbone, self.head = nn.Identity(), nn.Linear(features, classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def newton_step(x, y, lam, classes):
    """-H^-1 g at w = 0 of sum_i CE([x_i, 1] w) + lam / 2 |w|^2, by autograd: the (F + 1, C) head step."""
    design = torch.cat([x, torch.ones(len(x), 1)], 1).double()

    def objective(w):
        logits = design @ w.view(-1, classes)
        return nn.functional.cross_entropy(logits, y, reduction="sum") + lam / 2 * w.square().sum()

    w0 = torch.zeros(design.shape[1] * classes, dtype=torch.float64)
    grad = torch.autograd.functional.jacobian(objective, w0)
    hess = torch.autograd.functional.hessian(objective, w0)
    return -torch.linalg.solve(hess, grad).view(-1, classes)


def test_uniform_curvature_scrub_is_the_difference_of_exact_newton_steps_from_a_zero_head():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 6, generator=gen), torch.arange(30) % 4
    model = FeatureClassifier()
    wd = 0.01
    out = fast_ntk_scrub(model, (x[24:], y[24:]), (x[:24], y[:24]), init="zeros", weight_decay=wd, cache=False)
    step = newton_step(x[:24], y[:24], 24 * wd, 4) - newton_step(x, y, 30 * wd, 4)  # w_lin(D_r) - w_lin(D)
    moved = torch.cat([out.model.head.weight.T - model.head.weight.T,
                       (out.model.head.bias - model.head.bias)[None]]).double()
    torch.testing.assert_close(moved, step.to(moved.dtype), rtol=1e-4, atol=1e-6)
    identity = fast_ntk_scrub(model, (x[24:], y[24:]), (x[:24], y[:24]), init="zeros", weight_decay=wd,
                              cache=False, curvature="identity")
    assert identity.info["curvature"] == "identity" and out.info["curvature"] == "uniform"
    assert identity.info["delta_norm"] < 0.5 * out.info["delta_norm"], "identity metric: a much shorter step"


def test_unknown_curvature_is_a_one_line_error():
    with pytest.raises(UserError, match="unknown curvature 'exact'; valid: identity, uniform"):
        fast_ntk_scrub(FeatureClassifier(), (torch.zeros(2, 6), torch.zeros(2)), (torch.zeros(3, 6), torch.zeros(3)),
                       curvature="exact")


# --- benchmark pieces --------------------------------------------------------------------------------------------
def test_scenarios_split_by_class_and_at_random(digits):
    train, test = digits
    split = make_split(ScenarioConfig(forget_classes=[3]), train, test, 10)
    assert bool((split.forget.labels == 3).all()) and not bool((split.retain.labels == 3).any())
    assert len(split.forget) + len(split.retain) == len(train) and not bool((split.test.labels == 3).any())
    forget, retain = random_forget_split(train, 0.1, seed=1)
    assert len(forget) == round(0.1 * len(train)) and len(forget) + len(retain) == len(train)
    both = torch.cat([forget.images, retain.images]).flatten(1)
    assert torch.equal(both.sum(0), train.images.flatten(1).sum(0)), "D_f and D_r partition the train split"
    assert make_split(ScenarioConfig(forget_fraction=0.1, seed=1), train, test, 10).test is test
    with pytest.raises(UserError, match="exactly one"):
        ScenarioConfig(forget_classes=[1], forget_fraction=0.1)
    with pytest.raises(UserError, match=r"forget_classes \[12\] invalid"):
        make_split(ScenarioConfig(forget_classes=[12]), train, test, 10)


def test_a_scenario_of_several_trials_runs_each_request_alone():
    each = ScenarioConfig(forget_each=[2, 5]).trials()
    assert [t.forget_classes for t in each] == [[2], [5]] and each[1].describe() == "forget class 5"
    seeds = ScenarioConfig(forget_fraction=0.1, seeds=[3, 4]).trials()
    assert [(t.forget_fraction, t.seed) for t in seeds] == [(0.1, 3), (0.1, 4)]
    assert ScenarioConfig(forget_classes=[1, 2]).trials()[0].describe() == "forget classes 1, 2"
    with pytest.raises(UserError, match="exactly one of forget_classes, forget_each, forget_fraction"):
        ScenarioConfig(forget_classes=[1], forget_each=[2])
    with pytest.raises(UserError, match=r"seeds \[1\] apply to forget_fraction scenarios only"):
        ScenarioConfig(forget_each=[1], seeds=[1])


def test_benchmark_config_loads_and_refuses_bad_keys(tmp_path):
    cfg = load_benchmark_config(BENCH_CONFIG)
    assert set(cfg.scenarios) == {"class", "random"} and cfg.train.optimizer == "sgd"
    sfr = engine_run(cfg, "sfr_on")
    assert (sfr.method.forget_every, sfr.method.alpha, sfr.method.forget_clip, sfr.method.lam) == (5, 25.0, 7.0, 0.5)
    assert engine_run(cfg, "ga").train.steps == 10 and engine_run(cfg, "ft").train.steps == cfg.train.steps
    for override, message in ((["methods.salun={}"], "unknown methods.name 'salun'"),
                              (["methods.ft.optimiser={}"], "methods.ft has unknown keys ['optimiser']"),
                              (["scenarios.class.classes=[1]"], "scenarios.class must be a mapping with keys"),
                              (["fast_ntk.init=ones"], "unknown fast_ntk.init 'ones'")):
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
            cfg = load_benchmark_config(BENCH_CONFIG, override)
            engine_run(cfg, "ft")


def _rows(ntk_fa, sfr_avg):
    metrics = {"RT": (0.0, 1.0, 0.99, 0.99, 0.0), "Original": (1.0, 1.0, 0.98, 0.07, 8.7),
               "Fast-NTK (head)": (ntk_fa, 1.0, 0.985, 0.9, 0.7), "GA": (0.0, 0.6, 0.6, 0.6, 5.0),
               "FT": (1.0, 1.0, 0.99, 0.05, 9.0), "SFR-ON": (0.0, 0.99, 0.97, 0.5, 3.0)}
    rows = []
    for method, (fa, ra, ta, mia, kl) in metrics.items():
        row = {"scenario": "class", "trial": "forget class 7", "method": method, "FA": fa, "RA": ra, "TA": ta, "MIA": mia, "D_KL": kl,
               "RTE": 1.0}
        row["Avg.D"] = sum(abs(row[k] - metrics["RT"][i]) for i, k in enumerate(("FA", "RA", "TA", "MIA"))) / 4
        rows.append(row)
    rows[-1]["Avg.D"] = sfr_avg
    return rows


def test_acceptance_checks_follow_the_numbers_and_outputs_are_written(tmp_path):
    checks = dict((claim.split(":")[0], ok) for claim, ok in acceptance(_rows(ntk_fa=0.0, sfr_avg=0.1)))
    assert all(checks.values()), checks
    bad = dict((claim.split(":")[0], ok) for claim, ok in acceptance(_rows(ntk_fa=1.0, sfr_avg=0.5)))
    assert not bad["[class] Fast-NTK (head) closer to RT than Original on FA"]
    assert bad["[class] Fast-NTK (head) closer to RT than Original on RA"], "equal zero gaps count as holding"
    assert [ok for claim, ok in acceptance(_rows(1.0, 0.4)) if "SFR-on" in claim] == [False, True]
    table, results = write_outputs(_rows(0.0, 0.1), acceptance(_rows(0.0, 0.1)), tmp_path)
    assert "| Fast-NTK (head) | 0.00 | 100.00 | 98.50 | 90.00 | 0.700 |" in table.read_text()
    with open(results) as fh:
        read = list(csv.DictReader(fh))
    assert len(read) == 6 and float(read[0]["TA"]) == 0.99
    assert scenario_tables(_rows(0.0, 0.1)).startswith("**class** (forget class 7)")


def test_several_trials_are_judged_on_their_means_and_counted_per_trial():
    first, second = _rows(ntk_fa=0.0, sfr_avg=0.1), _rows(ntk_fa=1.0, sfr_avg=0.1)  # Fast-NTK FA: tie in trial 2
    for row in second:
        row["trial"] = "forget class 3"
    rows = first + second + mean_rows(first + second)
    means = {r["method"]: r for r in rows if r["trial"] == "mean of 2"}
    assert means["Fast-NTK (head)"]["FA"] == 0.5 and means["RT"]["TA"] == pytest.approx(0.99)
    claims = dict(acceptance(rows))
    fa = next(c for c in claims if "on FA" in c)
    assert claims[fa] and fa.endswith("0.5000 vs 1.0000 (strictly closer in 1 of 2 trials)")
    table = scenario_tables(rows)
    assert table.startswith("**class** (mean of 2 trials: forget class 7; forget class 3)")
    assert "| Fast-NTK (head) | 50.00 |" in table and table.count("| RT |") == 1


def test_shipped_base_classifier_records_the_head_init_of_its_recipe(tmp_path):
    from diffunlearn.assets import resolve_model_path

    folder = resolve_model_path("embedded:digits/classifier_plain")
    recorded = load_head_init(folder)
    expected = head_init(load_recipe(RECIPE))
    assert recorded.keys() == expected.keys() == {"head.weight", "head.bias"}
    for name in expected:
        assert torch.equal(recorded[name], expected[name]), name
    model = ImageClassifier.from_pretrained(folder)
    assert model.num_classes == 10 and model.network.head.out_features == 10
    with pytest.raises(UserError, match=f"has no {HEAD_INIT_FILE}"):
        load_head_init(tmp_path)


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_on_a_tiny_model(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 1\nbatch_size: 128\nchannels: [4, 8, 8]\nreject_class: false\n")
    model_dir = tmp_path / "model"
    tiny_classifier().save_pretrained(model_dir)
    rows, checks = run_benchmark(BENCH_CONFIG, tmp_path / "out", [
        f"model={model_dir}", f"recipe={recipe}", "train.steps=2", "methods.ga.train.steps=1",
        "methods.sfr_on.method.mask_batches=1", "scenarios.random.seeds=[0,1]"], scenarios=["random"],
        progress=lambda m: None)
    methods = ["RT", "Original", "FT", "GA", "RL", "SFR-ON", "Fast-NTK (head)", "Fast-NTK (BN + head)"]
    assert [r["trial"] for r in rows] == [f"forget 10% random samples, seed {s}" for s in (0, 1) for _ in methods] \
        + ["mean of 2"] * len(methods)
    assert [r["method"] for r in rows] == methods * 3
    assert all(0 <= r[k] <= 1 for r in rows for k in ("FA", "RA", "TA", "MIA")) and len(checks) == 7
    assert (tmp_path / "out" / "table.md").is_file() and (tmp_path / "out" / "results.csv").is_file()
