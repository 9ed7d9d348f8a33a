"""Fast-NTK unlearning against exact oracles: autograd Jacobians, primal = dual, downdate = direct solve, ridge
refit (scikit-learn), a retrained head; plus data forms, transformers models, errors and the CLI handler."""

import argparse
import collections
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from diffunlearn.assets import resolve_model_path
from diffunlearn.commands.fast_ntk import add_fast_ntk_parser
from diffunlearn.data import LabeledImages, load_digits_splits
from diffunlearn.errors import UserError
from diffunlearn.evaluation.classification import kl_to_retrained
from diffunlearn.models.digits_classifier import DigitsClassifier
from diffunlearn.ntk.cache import clear_memory_cache
from diffunlearn.ntk.rows import JacobianRows
from diffunlearn.ntk.subset import select_subset
from diffunlearn.ntk.unlearn import fast_ntk_scrub, fast_ntk_unlearn


@pytest.fixture(scope="module")
def digits():
    train, test = load_digits_splits()
    return train, test


def tiny_cnn(seed=0, data=None, dtype=torch.float32):
    """A tiny DigitsClassifier whose BatchNorm running statistics come from real data (not the 0 / 1 defaults)."""
    torch.manual_seed(seed)
    model = DigitsClassifier(channels=(4, 8, 8)).to(dtype)
    if data is not None:
        with torch.no_grad():
            model.train()(data.to(dtype))
    return model.eval()


def small_split(train, n_retain=40, n_forget=12):
    """(forget, retain) tensor pairs from the first samples of the training set."""
    images, labels = train.images[:n_retain + n_forget], train.labels[:n_retain + n_forget]
    return (images[n_retain:], labels[n_retain:]), (images[:n_retain], labels[:n_retain])


def subset_params(model, names):
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


def assert_params_close(a, b, rtol, atol=0.0):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


def test_vmap_jacobians_equal_a_per_sample_autograd_loop(digits):
    train, _ = digits
    model = tiny_cnn(data=train.images[:64])
    names = select_subset(model, "bn").names
    rows = JacobianRows(model, names, None, num_classes=10, loss="ce", chunk_size=2)
    images = train.images[:5]
    jac, logits = rows.jacobians(images)
    params = dict(model.named_parameters())
    for i in range(len(images)):
        out = model(images[i:i + 1])[0]
        torch.testing.assert_close(logits[i], out, rtol=1e-5, atol=1e-6)
        for c in range(10):
            grads = torch.autograd.grad(out[c], [params[n] for n in names], retain_graph=True)
            torch.testing.assert_close(jac[i, c], torch.cat([g.reshape(-1) for g in grads]), rtol=1e-4, atol=1e-6)


def test_expected_fisher_of_the_jacobian_rows_equals_the_sum_over_labels(digits):
    train, _ = digits
    model = tiny_cnn(data=train.images[:64])
    rows = JacobianRows(model, select_subset(model, "bn+head").names, None, num_classes=10, loss="ce")
    images, labels = train.images[:6], train.labels[:6]
    _, _, fisher = rows(images, labels)
    jac, logits = rows.jacobians(images)
    jac, probs, expected = jac.double(), logits.double().softmax(-1), torch.zeros(rows.num_params, dtype=torch.float64)
    for i in range(len(images)):
        for y in range(10):
            expected += probs[i, y] * (jac[i].T @ (probs[i] - nn.functional.one_hot(torch.tensor(y), 10))).square()
    torch.testing.assert_close(fisher[:, 0], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("init", ["current", "zeros"])
@pytest.mark.parametrize("subset", ["head", "bn", "bn+head"])
def test_primal_equals_dual(digits, subset, init):
    train, _ = digits
    model = tiny_cnn(data=train.images[:64])
    forget, retain = small_split(train, n_retain=24, n_forget=6)
    results = [fast_ntk_scrub(model, forget, retain, subset=subset, form=form, cache=False, init=init)
               for form in ("primal", "dual")]
    assert [r.info["form"] for r in results] == ["primal", "dual"]
    names = results[0].info["subset_params"]
    before = subset_params(model, names)
    moved = [{n: p - before[n] for n, p in subset_params(r.model, names).items()} for r in results]
    assert results[0].info["delta_norm"] > 0
    assert_params_close(moved[0], moved[1], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("init", ["current", "zeros"])
def test_generic_jacobian_path_equals_the_exact_head_path(digits, init):
    train, _ = digits
    model = tiny_cnn(data=train.images[:64])
    forget, retain = small_split(train)
    exact = fast_ntk_scrub(model, forget, retain, subset="head", cache=False, init=init)
    generic = fast_ntk_scrub(model, forget, retain, subset=r"^head\.", cache=False, init=init)
    assert exact.info["init"] == generic.info["init"] == init
    assert generic.info["num_params"] == 10 * exact.info["num_params"], "classes decouple on the head path only"
    names = ["head.weight", "head.bias"]
    assert generic.info["delta_norm"] == pytest.approx(exact.info["delta_norm"], rel=1e-6)
    assert_params_close(subset_params(exact.model, names), subset_params(generic.model, names), rtol=1e-5,
                        atol=1e-6)  # float32 features vs float32 Jacobians, then float32 weights


# The set digest (the cache key of D) has its own tests: tests/test_digest.py.


def test_cached_downdate_equals_a_direct_solve_and_a_second_request_computes_only_forget_rows(digits):
    train, _ = digits
    clear_memory_cache()
    model = tiny_cnn(data=train.images[:64])
    images, labels = train.images[:60], train.labels[:60]
    first = fast_ntk_scrub(model, (images[48:], labels[48:]), (images[:48], labels[:48]), subset="bn+head")
    assert first.info["cache"] == "miss" and first.info["jacobian_samples"] == 60
    # A different split of the same D = retain + forget: only the 9 new forget samples are differentiated.
    keep = labels != 3
    forget, retain = (images[~keep], labels[~keep]), (images[keep], labels[keep])
    second = fast_ntk_scrub(model, forget, retain, subset="bn+head")
    assert second.info["cache"] == "memory" and second.info["jacobian_samples"] == int((~keep).sum()) < 60
    direct = fast_ntk_scrub(model, forget, retain, subset="bn+head", cache=False)
    assert direct.info["cache"] == "off" and direct.info["jacobian_samples"] == 60
    names = direct.info["subset_params"]
    assert_params_close(subset_params(second.model, names), subset_params(direct.model, names), rtol=1e-6,
                        atol=1e-9)
    clear_memory_cache()
    third = fast_ntk_scrub(model, forget, retain, subset="bn+head")
    assert third.info["cache"] == "disk" and third.info["jacobian_samples"] == int((~keep).sum())
    assert_params_close(subset_params(third.model, names), subset_params(second.model, names), rtol=0, atol=0)
    # Another D of the same size and labels (one pixel changed) is not taken for the cached one.
    nudged = images.clone()
    nudged[0, 0, 0, 0] += 0.5
    other = fast_ntk_scrub(model, (nudged[48:], labels[48:]), (nudged[:48], labels[:48]), subset="bn+head")
    assert (other.info["cache"], other.info["jacobian_samples"]) == ("miss", 60)
    # D named by the caller: no hashing, same statistics.
    named = [fast_ntk_scrub(model, forget, retain, subset="bn+head", cache="first-60") for _ in range(2)]
    assert [r.info["cache"] for r in named] == ["miss", "memory"] and named[1].info["seconds"]["digest"] < 0.01
    assert_params_close(subset_params(named[1].model, names), subset_params(direct.model, names), rtol=1e-6,
                        atol=1e-9)


def test_the_in_memory_statistics_are_capped_by_count_and_by_size(monkeypatch):
    """Least recently used entries leave memory beyond MEMORY_ENTRIES or MEMORY_BYTES; the newest always stays."""
    from diffunlearn.ntk import cache
    from diffunlearn.ntk.statistics import Statistics

    clear_memory_cache()
    entry = lambda p: Statistics(torch.zeros(p, p, dtype=torch.float64), torch.zeros(p, 1, dtype=torch.float64),  # noqa
                                 None, 1)
    monkeypatch.setattr(cache, "MEMORY_BYTES", 3 * 100 * 101 * 8)  # three 100-parameter entries
    for name in "abcd":
        cache.store_statistics(name, entry(100), disk=False)
    assert list(cache._MEMORY) == ["b", "c", "d"]
    cache.store_statistics("big", entry(300), disk=False)  # larger than the cap alone: kept, all others leave
    assert list(cache._MEMORY) == ["big"]
    clear_memory_cache()


def test_the_statistics_files_are_capped_on_disk_least_recently_used_first(monkeypatch):
    """Beyond DIFFUNLEARN_NTK_CACHE_BYTES the least recently used files are deleted (a load from disk is a use), the
    newest always stays; a bad value is refused, one line, before anything runs."""
    import os

    from diffunlearn.ntk import cache
    from diffunlearn.ntk.statistics import Statistics

    entry = lambda p: Statistics(torch.zeros(p, p, dtype=torch.float64), torch.zeros(p, 1, dtype=torch.float64),  # noqa
                                 None, 1)
    cache.store_statistics("a", entry(100))
    one = cache._path("a").stat().st_size
    monkeypatch.setenv("DIFFUNLEARN_NTK_CACHE_BYTES", str(3 * one))  # three files of this size
    for name in "bc":
        cache.store_statistics(name, entry(100))
    for age, name in enumerate("abc"):
        os.utime(cache._path(name), (1000 + age, 1000 + age))  # a oldest, c newest
    clear_memory_cache()
    assert cache.load_statistics("a")[1] == "disk"  # a used: now the most recent
    cache.store_statistics("d", entry(100))  # four files: b, the least recently used, goes
    assert sorted(p.stem for p in cache._path("a").parent.glob("*.safetensors")) == ["a", "c", "d"]
    cache.store_statistics("big", entry(300))  # larger than the cap alone: kept, all others go
    assert [p.stem for p in cache._path("a").parent.glob("*.safetensors")] == ["big"]
    clear_memory_cache()
    monkeypatch.setenv("DIFFUNLEARN_NTK_CACHE_BYTES", "8GB")
    model, x, y = nn.Sequential(nn.Linear(16, 4)), torch.randn(8, 16), torch.arange(8) % 4
    with pytest.raises(UserError, match=r"DIFFUNLEARN_NTK_CACHE_BYTES='8GB' is invalid; give a whole number"):
        fast_ntk_scrub(model, (x[:2], y[:2]), (x[2:], y[2:]))
    assert fast_ntk_scrub(model, (x[:2], y[:2]), (x[2:], y[2:]), cache=False).info["cache"] == "off"


@pytest.mark.slow
def test_the_speed_benchmark_runs_to_the_end_and_prints_its_ratios():
    """eval/fast_ntk_speed.py (sections 1 and 2) runs to the end, its own checks holding (the cold calls miss, the
    later requests hit), and prints both cold-call ratios without a verdict (issue 31 retired the <= 1.3 / <= 2.0
    targets); the timings themselves are not asserted."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "eval/fast_ntk_speed.py", "--threads", "1", "--vit-samples", "0"], cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in ("cold call A / one float64 X^T X pass:", "cold call A32 (precision='float32') / one float32 pass:"):
        assert re.search(re.escape(line) + r" \d+\.\d\dx; without the cache", out.stdout), line
    assert "<= 1.3" not in out.stdout and "<= 2.0" not in out.stdout, "a verdict against a retired target"
    assert "full-model G / measured peak:" in out.stdout


@pytest.mark.parametrize("subset", ["head", "bn"])
def test_an_empty_forget_set_changes_nothing_and_the_input_model_is_never_modified(digits, subset):
    train, _ = digits
    model = tiny_cnn(data=train.images[:64])
    original = {k: v.clone() for k, v in model.state_dict().items()}
    empty = (train.images[:0], train.labels[:0])
    result = fast_ntk_scrub(model, empty, (train.images[:40], train.labels[:40]), subset=subset)
    assert result.info["delta_norm"] == 0.0
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, original[key]), key
    fast_ntk_unlearn(model, (train.images[40:50], train.labels[40:50]), (train.images[:40], train.labels[:40]),
                     subset=subset, scale=True, fisher_noise=1e-6)
    for key, value in model.state_dict().items():
        assert torch.equal(value, original[key]), f"input model changed at {key}"


def test_the_documented_top_level_entry_points_run_the_library_functions(digits):
    import diffunlearn
    from diffunlearn.runs.evaluate import evaluate_model_command

    train, _ = digits
    model = tiny_cnn(data=train.images[:64])
    forget, retain = small_split(train)
    top, direct = diffunlearn.fast_ntk_unlearn(model, forget, retain), fast_ntk_unlearn(model, forget, retain)
    for key, value in direct.state_dict().items():
        assert torch.equal(top.state_dict()[key], value), key
    assert not torch.equal(top.head.weight, model.head.weight), "the scrub must change the head"
    assert diffunlearn.fast_ntk_scrub is fast_ntk_scrub
    from diffunlearn import api

    assert diffunlearn.unlearn is api.unlearn and diffunlearn.evaluate is api.evaluate
    assert diffunlearn.evaluate_config is evaluate_model_command
    assert diffunlearn.__version__ != "unknown"
    with pytest.raises(AttributeError, match="fast_ntk_unlearn"):  # a typo names the API
        diffunlearn.fast_ntk_unlearning  # noqa: B018


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_mse_head_with_zero_init_is_scrubbed_exactly_to_the_ridge_refit_on_retain(digits, form):
    from sklearn.linear_model import Ridge

    train, _ = digits
    wd = 5e-4
    model = DigitsClassifier.from_pretrained(resolve_model_path("embedded:digits/classifier")).double().eval()
    with torch.no_grad():
        phi = model.features(train.images.double()).numpy()
    design = np.c_[phi, np.ones(len(phi))]
    onehot = np.eye(model.head.out_features)[train.labels.numpy()]  # 11 outputs: the judge's reject class
    full = Ridge(alpha=len(phi) * wd, fit_intercept=False).fit(design, onehot)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(full.coef_[:, :-1]))
        model.head.bias.copy_(torch.from_numpy(full.coef_[:, -1]))
    forget_mask = torch.randperm(len(phi), generator=torch.Generator().manual_seed(0)) < 150
    forget, retain = LabeledImages(train.images[forget_mask], train.labels[forget_mask]), \
        LabeledImages(train.images[~forget_mask], train.labels[~forget_mask])
    result = fast_ntk_scrub(model, forget, retain, loss="mse", init="zeros", weight_decay=wd, form=form)
    keep = ~forget_mask.numpy()
    refit = Ridge(alpha=int(keep.sum()) * wd, fit_intercept=False).fit(design[keep], onehot[keep]).coef_
    got = torch.cat([result.model.head.weight, result.model.head.bias[:, None]], 1).detach().numpy()
    assert np.abs(got - full.coef_).max() > 1e-3, "the forget set must matter"
    np.testing.assert_allclose(got, refit, rtol=1e-6, atol=1e-9 * np.abs(refit).max())


def _retrained_head_logits(model, retain, forget_images, wd):
    """A head retrained from zero on frozen features of D_r (cross-entropy + wd, L-BFGS): RT's logits on D_f."""
    with torch.no_grad():
        phi_r, phi_f = model.features(retain.images).double(), model.features(forget_images).double()
    head = nn.Linear(phi_r.shape[1], model.head.out_features).double()
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(phi_r), retain.labels) + wd * sum(
            p.square().sum() for p in head.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return head(phi_f).float()


@pytest.fixture(scope="module")
def forget_seven(digits):
    """The embedded classifier, D_f = class 7, D_r, and the logits on D_f of a head retrained on D_r."""
    model = DigitsClassifier.from_pretrained(resolve_model_path("embedded:digits/classifier")).eval()
    forget, retain = digits[0].forget_remain([7])
    return model, forget, retain, _retrained_head_logits(model, retain, forget.images, wd=5e-4)


@pytest.mark.parametrize("init", [None, "zeros"])
def test_cross_entropy_scrub_of_the_digits_head_moves_towards_a_retrained_head(forget_seven, init):
    model, forget, retain, rt = forget_seven
    result = fast_ntk_scrub(model, forget, retain, subset="head", loss="ce", init=init)
    with torch.no_grad():
        before, after = model(forget.images), result.model(forget.images)
    kl_before, kl_after = kl_to_retrained(before, rt), kl_to_retrained(after, rt)
    assert kl_after < kl_before
    margin = lambda logits: (logits[:, 7] - logits.topk(2).values[:, 1]).mean()  # noqa: E731
    assert margin(after) < margin(before), "the forgotten class must lose confidence on D_f"
    if init == "zeros":
        assert kl_after < 0.9 * kl_before


def test_scale_and_fisher_noise_are_reported_and_reproducible(digits):
    train, _ = digits
    model = tiny_cnn(data=train.images[:64])
    forget, retain = small_split(train)
    plain = fast_ntk_scrub(model, forget, retain)
    scaled = fast_ntk_scrub(model, forget, retain, scale=True)
    assert plain.info["scale"] == 1.0 and scaled.info["scale"] >= 1.0 and not scaled.info["scale_clamped"]
    step = lambda r: (r.model.head.weight - model.head.weight).norm()  # noqa: E731
    torch.testing.assert_close(step(scaled), scaled.info["scale"] * step(plain), rtol=1e-5, atol=1e-8)
    noisy = [fast_ntk_scrub(model, forget, retain, fisher_noise=1e-6, seed=s) for s in (1, 1, 2)]
    assert noisy[0].info["fisher_noise"] == 1e-6 and noisy[0].info["noise_std_mean"] > 0
    assert torch.equal(noisy[0].model.head.weight, noisy[1].model.head.weight)
    assert not torch.equal(noisy[0].model.head.weight, noisy[2].model.head.weight)
    assert not torch.equal(noisy[0].model.head.weight, plain.model.head.weight)


class DictImages(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


def test_every_data_form_gives_the_same_result(digits):
    train, _ = digits
    model = tiny_cnn(data=train.images[:64])
    (fi, fl), (ri, rl) = small_split(train)
    forms = [((fi, fl), (ri, rl)), (LabeledImages(fi, fl), LabeledImages(ri, rl)),
             (list(zip(fi, fl.tolist())), list(zip(ri, rl.tolist()))),
             (DictImages(fi, fl), torch.utils.data.DataLoader(DictImages(ri, rl), batch_size=7)),
             (torch.utils.data.DataLoader(torch.utils.data.TensorDataset(fi, fl), batch_size=5),
              torch.utils.data.TensorDataset(ri, rl))]
    heads = [fast_ntk_scrub(model, f, r, cache=False, batch_size=16).model.head.weight for f, r in forms]
    for head in heads[1:]:
        torch.testing.assert_close(head, heads[0], rtol=1e-5, atol=1e-6)  # float32 features, batch-size dependent
    clear_memory_cache()  # the same D in every form (and split the same way or not) is one cache entry
    results = [fast_ntk_scrub(model, f, r, cache=True, batch_size=16) for f, r in forms[::-1]]
    assert [r.info["cache"] for r in results] == ["miss"] + ["memory"] * (len(forms) - 1)


def _tiny_transformers(kind):
    from transformers import AutoModelForImageClassification, ResNetConfig, ViTConfig

    torch.manual_seed(0)
    config = (ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                           layer_type="basic", num_labels=4) if kind == "resnet" else
              ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        image_size=8, patch_size=4, num_channels=1, num_labels=4))
    return AutoModelForImageClassification.from_config(config).eval()


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_tiny_transformers_image_classifier_head_subset(digits, kind):
    train, _ = digits
    model = _tiny_transformers(kind)
    labels = train.labels[:40] % 4
    forget, retain = (train.images[30:40], labels[30:40]), (train.images[:30], labels[:30])
    primal = fast_ntk_scrub(model, forget, retain, subset="head", form="primal", cache=False)
    dual = fast_ntk_scrub(model, forget, retain, subset="head", form="dual", cache=False)
    names = primal.info["subset_params"]
    assert names == ["classifier.1.weight", "classifier.1.bias"] if kind == "resnet" else \
        names == ["classifier.weight", "classifier.bias"]
    assert_params_close(subset_params(primal.model, names), subset_params(dual.model, names), rtol=1e-6, atol=1e-9)
    moved = [n for n, p in primal.model.named_parameters() if not torch.equal(p, dict(model.named_parameters())[n])]
    assert moved == names


def _no_head_model():
    return nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())  # logits from a convolution: no nn.Linear at all


def _softmax_ending_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Softmax(-1))


class _TorchvisionLikeViT(nn.Module):
    """torchvision's layout: the head is `heads.head` (an nn.Sequential attribute named `heads`)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh())
        self.heads = nn.Sequential(collections.OrderedDict(head=nn.Linear(16, 10)))

    def forward(self, x):
        return self.heads(self.encoder(x))


@pytest.mark.parametrize("build, head", [
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), ["3.weight", "3.bias"]),
    (lambda: nn.Sequential(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh()), nn.Dropout(0.1),
                           nn.Linear(16, 10)), ["2.weight", "2.bias"]),
    (_TorchvisionLikeViT, ["heads.head.weight", "heads.head.bias"]),
])
def test_the_last_linear_layer_is_found_as_the_head(digits, build, head):
    """A model whose forward ends in a linear layer: subset "head" finds it (no attribute names needed) and its
    exact head path equals the Jacobian path over the same two parameters."""
    train, _ = digits
    torch.manual_seed(0)
    model = build()
    forget, retain = (train.images[:10], train.labels[:10]), (train.images[10:60], train.labels[10:60])
    exact = fast_ntk_scrub(model, forget, retain, subset="head", cache=False)
    assert exact.info["subset_params"] == head
    pattern = "|".join(re.escape(n) for n in head)
    jacobian = fast_ntk_scrub(model, forget, retain, subset=f"^({pattern})$", cache=False)
    assert_params_close(subset_params(exact.model, head), subset_params(jacobian.model, head), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("build, kwargs, message", [
    (tiny_cnn, {"subset": "lora_"}, "subset pattern 'lora_' matches no parameter of DigitsClassifier (parameters: "
                                     "backbone.0.weight"),
    (tiny_cnn, {"forget": (torch.zeros(3, 1, 9, 9), torch.zeros(3, dtype=torch.long))},
     "forget images have shape (1, 9, 9) but the model takes (1, 8, 8)"),
    (tiny_cnn, {"forget": (torch.zeros(3, 3, 8, 8), torch.zeros(3, dtype=torch.long)), "retain":
                (torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long))},
     "forget images have shape (3, 8, 8) but the model takes (1, 'H', 'W') (from the model config)"),
    (_no_head_model, {}, "cannot find the classifier head of Sequential: it has no nn.Linear layer; choose another "
                         "subset: 'head', 'bn', 'prompt'"),
    (_softmax_ending_model, {}, "the head of Sequential is not its final layer"),
    (_no_head_model, {"subset": "bn"}, "subset 'bn' matches no parameter"),
    (tiny_cnn, {"loss": "hinge"}, "unknown loss 'hinge'; valid: ce, mse"),
    (tiny_cnn, {"init": "ones"}, "unknown init 'ones'"),
    (tiny_cnn, {"weight_decay": -1.0}, "weight_decay -1.0 is invalid"),
    (tiny_cnn, {"forget": (torch.zeros(2, 1, 8, 8), torch.tensor([3, 12]))}, "label 12 is out of range"),
    (tiny_cnn, {"forget": "digits"}, "forget set of type str is not supported"),
    (tiny_cnn, {"cache": 3}, "cache 3 is invalid"),
    (tiny_cnn, {"form": "qr"}, "unknown form 'qr'; valid: auto, dual, primal"),
    (tiny_cnn, {"init": {"head.weight": torch.zeros(10, 8)}}, "init does not fit the subset: missing ['head.bias']"),
])
def test_bad_input_raises_a_one_line_user_error(digits, build, kwargs, message):
    train, _ = digits
    args = {"forget": (train.images[:4], train.labels[:4]), "retain": (train.images[4:20], train.labels[4:20]),
            **kwargs}
    with pytest.raises(UserError) as info:
        fast_ntk_unlearn(build(), args.pop("forget"), args.pop("retain"), **args)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_cli_handler_writes_the_unlearned_classifier_and_refuses_an_existing_output(tmp_path, tiny_classifier_dir):
    parser = argparse.ArgumentParser()
    add_fast_ntk_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "ntk"
    args = parser.parse_args(["fast-ntk", "--model", str(tiny_classifier_dir), "--forget-classes", "7",
                              "--output", str(out)])
    summary = args.handler(args)
    saved = json.loads((out / "fast_ntk.json").read_text())
    assert saved["info"]["form"] == "primal" and saved["metrics"]["unlearned"].keys() >= {"FA", "RA", "TA", "MIA"}
    assert saved["init"] == saved["info"]["init"] == "zeros" and saved["forget_classes"] == [7]
    assert summary["info"]["num_forget"] == saved["info"]["num_forget"] > 0
    unlearned = DigitsClassifier.from_pretrained(out)
    original = DigitsClassifier.from_pretrained(tiny_classifier_dir)
    assert not torch.equal(unlearned.head.weight, original.head.weight)
    assert torch.equal(unlearned.backbone[0].weight, original.backbone[0].weight)
    assert not list(tmp_path.glob(".ntk.partial*"))
    with pytest.raises(UserError, match="already holds a run; pass --overwrite"):
        args.handler(args)
    args = parser.parse_args(["fast-ntk", "--model", str(tiny_classifier_dir), "--forget-fraction", "0.05",
                              "--output", str(out), "--overwrite"])
    assert args.handler(args)["info"]["num_forget"] == round(0.05 * 1437)


@pytest.mark.parametrize("subset", ["head", "bn+head"])
def test_float32_products_agree_with_float64_and_keep_their_own_cache(digits, subset):
    train, _ = digits
    clear_memory_cache()
    model = tiny_cnn(data=train.images[:64])
    forget, retain = small_split(train, n_retain=60, n_forget=12)
    exact = fast_ntk_scrub(model, forget, retain, subset=subset, cache="set-a")
    fast = fast_ntk_scrub(model, forget, retain, subset=subset, cache="set-a", precision="float32")
    assert (exact.info["precision"], fast.info["precision"]) == ("float64", "float32")
    assert fast.info["cache"] == "miss", "float32 statistics are not the float64 ones"
    names = exact.info["subset_params"]
    before = subset_params(model, names)
    moved = [torch.cat([(subset_params(r.model, names)[n] - before[n]).reshape(-1) for n in names])
             for r in (exact, fast)]
    assert moved[0].norm() > 0 and (moved[1] - moved[0]).norm() < 1e-3 * moved[0].norm()
    with pytest.raises(UserError, match="unknown precision 'float16'; valid: float32, float64"):
        fast_ntk_scrub(model, forget, retain, subset=subset, precision="float16")


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("subset", ["head", "bn"])
def test_streamed_statistics_equal_the_explicit_products_on_both_product_paths(digits, monkeypatch, precision, subset):
    """A = X^T X and b = X^T R streamed through the block buffer (batches smaller and larger than it, several
    flushes) equal the products of the explicitly stacked rows, on the CPU's syrk path and the devices' three-block
    GEMM path alike."""
    from diffunlearn.data.batches import LabeledBatches
    from diffunlearn.ntk import statistics
    from diffunlearn.ntk.rows import HeadRows

    train, _ = digits
    model = tiny_cnn().eval()
    chosen = select_subset(model, subset)
    rows = (HeadRows(model, chosen.head, None, 10, "ce", "uniform", precision) if chosen.head is not None
            else JacobianRows(model, chosen.names, None, 10, "ce", None, "uniform", precision))
    data = (train.images[:150], train.labels[:150])
    design, target, _ = rows(*data)
    exact = design.double().T @ design.double(), design.double().T @ target.double()
    tol = dict(rtol=1e-10, atol=1e-10) if precision == "float64" else dict(rtol=1e-4, atol=1e-4)
    width = rows.num_params + rows.num_rhs
    element = 8 if precision == "float64" else 4
    for syrk in (True, False):
        monkeypatch.setattr(statistics, "CPU_SYRK", syrk)
        for batch, block_rows in ((32, 70), (100, 50)):  # several batches per block; a batch larger than a block
            monkeypatch.setattr(statistics, "BLOCK_BYTES", block_rows * rows.rows_per_sample * width * element)
            stats = statistics.accumulate(rows, LabeledBatches(data, batch, "set"))
            assert stats.count == 150
            torch.testing.assert_close(stats.gram.tril(), exact[0].tril(), **tol)  # what the solves read
            torch.testing.assert_close(stats.rhs, exact[1], **tol)
