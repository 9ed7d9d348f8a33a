"""SFR-on: saliency mask, adaptive weights, alpha schedule, forget frequency K, ablation switches."""

import math

import pytest
import torch
from conftest import tiny_ddpm
from helpers import make_trainer, snapshot

from diffunlearn.methods.base import adaptive_weights
from diffunlearn.methods.sfr_on import alpha_at


def test_masked_elements_do_not_move_in_a_forget_step(tmp_path):
    trainer = make_trainer(tiny_ddpm(), tmp_path, ["method.remain=false", "method.forget_every=1", "train.optimizer=adam"])
    method = trainer.method
    method.setup()
    mask = method.mask
    assert 0.0 < mask.density() < 1.0, "the Fisher-ratio mask should keep some elements and freeze others"
    # give Adam momentum on every element first (a remain step), so a gradient-only mask would not suffice
    trainer.update(trainer.losses(trainer.remain_batch(0), 0, stream=2).mean())
    before = snapshot(trainer)
    method.training_step(1)  # forget step only (remain=false)
    moved_salient = 0
    for name, p in trainer.params:
        frozen = ~mask.tensors[name]
        assert torch.equal(p.detach()[frozen], before[name][frozen]), f"masked elements of {name} moved"
        moved_salient += int((p.detach()[~frozen] != before[name][~frozen]).sum())
    assert moved_salient > 0, "the forget step should move salient elements"


def test_saliency_mask_is_the_fisher_ratio_threshold_and_is_cached(tmp_path):
    trainer = make_trainer(tiny_ddpm(), tmp_path, ["method.gamma=1.0"])
    info = trainer.method.setup()
    assert not info["mask_cache_hit"]
    from diffunlearn.methods.saliency import fisher_diagonal

    cfg = trainer.cfg.method
    f_f = fisher_diagonal(trainer.context, [trainer.forget_batch(i) for i in range(2)], 1001, cfg.mask_guidance_scale,
                          cfg.mask_grad_clip)
    f_r = fisher_diagonal(trainer.context, [trainer.remain_batch(i) for i in range(2)], 1002, cfg.mask_guidance_scale,
                          cfg.mask_grad_clip)
    for name in f_f:
        expected = (f_f[name] + 1e-15) / (f_r[name] + 1e-15) >= 1.0
        assert torch.equal(trainer.method.mask.tensors[name], expected)
    again = make_trainer(tiny_ddpm(), tmp_path / "again", ["method.gamma=1.0"]).method
    assert again.setup()["mask_cache_hit"]
    assert all(torch.equal(again.mask.tensors[n], trainer.method.mask.tensors[n]) for n in f_f)


def test_adaptive_weights_match_closed_form():
    losses = torch.tensor([0.5, 1.0, 2.0, 4.0], requires_grad=True)
    lam = 0.5
    expected = losses.detach() ** -lam / (losses.detach() ** -lam).sum()
    weights = adaptive_weights(losses, lam)
    torch.testing.assert_close(weights, expected)
    assert not weights.requires_grad
    assert weights.argmax() == 0, "the best-remembered sample (lowest loss) gets the largest weight"
    torch.testing.assert_close(adaptive_weights(losses, 0.0), torch.full((4,), 0.25))


def test_alpha_schedule_cosine_and_constant():
    assert alpha_at(0, 100, 10.0, "cosine") == pytest.approx(10.0)
    assert alpha_at(50, 100, 10.0, "cosine") == pytest.approx(5.0)
    assert alpha_at(25, 100, 10.0, "cosine") == pytest.approx(10.0 * (1 + math.cos(math.pi / 4)) / 2)
    assert alpha_at(100, 100, 10.0, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert alpha_at(73, 100, 10.0, "constant") == 10.0


def test_forget_every_k_alternates_slow_forget_and_fast_remain_steps(tmp_path):
    trainer = make_trainer(tiny_ddpm(), tmp_path, ["method.forget_every=3", "method.saliency_mask=false"])
    calls = []
    real_update = trainer.update
    trainer.update = lambda loss, clip=None, mask=None: (calls.append(clip), real_update(loss, clip, mask))
    trainer.method.setup()
    kinds = [sorted(trainer.method.training_step(t)) for t in range(7)]
    forget_steps = [t for t, k in enumerate(kinds) if "forget_loss" in k]
    assert forget_steps == [0, 3, 6]
    assert all("remain_loss" in k for k in kinds)
    assert len(calls) == 7 + 3


def test_plain_ga_ablation_only_ascends(tmp_path):
    overrides = ["method.remain=false", "method.saliency_mask=false", "method.adaptive_weights=false",
                 "method.alpha_schedule=constant", "method.alpha=1.0", "method.forget_clip=null",
                 "train.optimizer=sgd", "train.momentum=0.0", "train.lr=0.01", "train.cond_drop=0.0"]
    trainer = make_trainer(tiny_ddpm(), tmp_path, overrides)
    trainer.method.setup()
    batch = trainer.forget_batch(0)
    before = trainer.losses(batch, 0, stream=1).mean().item()
    trainer.method.training_step(0)
    after = trainer.losses(batch, 0, stream=1).mean().item()
    assert after > before, "gradient ascent must raise the forget loss on the same batch and noise"


def test_bf16_mixed_precision_switch_runs_and_keeps_fp32_weights(tmp_path):
    trainer = make_trainer(tiny_ddpm(), tmp_path, ["train.mixed_precision=bf16", "method.saliency_mask=false",
                                                   "train.steps=2", "train.log_every=1"])
    before = snapshot(trainer)
    trainer.train()
    assert all(p.dtype == torch.float32 for _, p in trainer.params)
    assert any(not torch.equal(p, before[n]) for n, p in trainer.params)
    rows = (tmp_path / "losses.jsonl").read_text().splitlines()
    assert len(rows) == 2 and all(math.isfinite(v) for v in __import__("json").loads(rows[-1]).values())
