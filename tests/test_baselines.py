"""Baselines (GA, RL, SalUn, SA): one step moves only what it should, and each loss moves the right way."""

import pytest
import torch
from conftest import tiny_ddpm
from helpers import make_trainer, snapshot

from diffunlearn.errors import UserError
from diffunlearn.methods.rl import relabel

SGD = ["train.optimizer=sgd", "train.momentum=0.0", "train.lr=0.002", "train.cond_drop=0.0"]


def _loss(trainer, batch, stream=1):
    with torch.no_grad():
        return trainer.losses(batch, 0, stream=stream).mean().item()


def test_ga_step_raises_the_forget_loss(tmp_path):
    trainer = make_trainer(tiny_ddpm(), tmp_path, method="ga", overrides=["method.clip=null", *SGD])
    batch = trainer.forget_batch(0)
    before = _loss(trainer, batch)
    trainer.method.training_step(0)
    assert _loss(trainer, batch) > before


def test_rl_step_teaches_the_forgotten_label_other_classes(tmp_path):
    trainer = make_trainer(tiny_ddpm(), tmp_path, method="rl", overrides=["method.clip=null",
                                                   "method.remain_weight=0.0", *SGD])
    relabelled = relabel(trainer.remain_batch(0), [7], trainer.generator(0, 3))
    assert bool((relabelled["labels"] == 7).all()) and not bool((trainer.remain_batch(0)["labels"] == 7).any())
    before = _loss(trainer, relabelled)
    trainer.method.training_step(0)
    assert _loss(trainer, relabelled) < before


def test_salun_mask_keeps_the_requested_share_and_frozen_weights_stay(tmp_path):
    trainer = make_trainer(tiny_ddpm(), tmp_path, method="salun", overrides=["method.keep_fraction=0.3",
                                                   "method.mask_batches=2", *SGD])
    assert (trainer.method.cfg.target, trainer.method.cfg.remain_weight) == ("pseudo_label", 1e-3), "paper defaults"
    trainer.method.setup()
    mask = trainer.method.mask
    assert abs(mask.density() - 0.3) < 0.01
    before = snapshot(trainer)
    with torch.no_grad():
        loss_before = trainer.method.relabel_loss(0).item()
    trainer.method.training_step(0)
    for name, p in trainer.params:
        frozen = ~mask.tensors[name]
        assert torch.equal(p.detach()[frozen], before[name][frozen]), name
    with torch.no_grad():
        assert trainer.method.relabel_loss(0).item() < loss_before


def test_salun_pseudo_label_loss_is_the_mse_to_a_retained_class_prediction(tmp_path):
    """SalUn's generation loss, by hand: the same x_t and t, the forgotten label's prediction against the detached
    prediction under random retained labels, torch MSELoss (mean over elements)."""
    trainer = make_trainer(tiny_ddpm(), tmp_path, method="salun", overrides=["method.mask_batches=1", *SGD])
    model, forget = trainer.model, trainer.forget_batch(0)
    pseudo = relabel(forget, [c for c in range(10) if c != 7], trainer.generator(0, 3))
    assert not bool((pseudo["labels"] == 7).any()) and len(set(pseudo["labels"].tolist())) > 1
    _, _, t, x_t = model.noised(forget, trainer.generator(0, 1), trainer.train_cfg.antithetic, trainer.shard)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(model.predict(x_t, t, forget["labels"]),
                                                model.predict(x_t, t, pseudo["labels"]))
        assert torch.allclose(trainer.method.relabel_loss(0), expected, rtol=1e-5)
    assert expected.item() > 0


def test_rl_target_and_sa_fisher_samples_are_validated(tmp_path):
    with pytest.raises(UserError, match="unknown method.target 'images'; valid: pseudo_label, retained_images"):
        make_trainer(tiny_ddpm(), tmp_path, method="rl", overrides=["method.target=images"])
    with pytest.raises(UserError, match="method.fisher_samples 64 exceeds method.replay_samples 32"):
        make_trainer(tiny_ddpm(), tmp_path, method="sa", overrides=["method.replay_samples=32"])


def test_sa_step_learns_the_surrogate_and_pays_an_ewc_penalty(tmp_path):
    trainer = make_trainer(tiny_ddpm(), tmp_path, method="sa", overrides=[
        "method.replay_samples=32", "method.replay_steps=2", "method.fisher_samples=18", "method.fisher_timesteps=10",
        "method.clip=null", *SGD])
    info = trainer.method.setup()
    assert info["replay_images"] == 32
    replay_labels = trainer.method.replay.dataset.labels
    assert not bool((replay_labels == 7).any()), "replay holds retained classes only"
    assert trainer.method.ewc_penalty().item() == 0.0
    embedding = trainer.method.fisher["class_embedding.weight"]  # SA's Fisher: replay of retained classes only
    assert float(embedding[7].abs().max()) == 0.0 and bool((embedding[[0, 1, 2, 3, 4, 5, 6, 8, 9]].sum(1) > 0).all())
    forget = trainer.forget_batch(0)
    noise = torch.rand(forget["pixel_values"].shape, generator=trainer.generator(0, 4)) * 2 - 1
    surrogate = {**forget, "pixel_values": noise}
    before, weights = _loss(trainer, surrogate), snapshot(trainer)
    logs = trainer.method.training_step(0)
    assert _loss(trainer, surrogate) < before
    assert trainer.method.ewc_penalty().item() > 0.0 and logs["ewc"].item() == 0.0
    assert all(torch.equal(trainer.method.anchor[n], weights[n]) for n in weights), "theta* is the base model"


def test_sa_replays_only_the_configured_remain_classes(tmp_path):
    """data.remain_classes narrows what is kept (as for a 1000-class DiT); SA's replay and Fisher follow it."""
    trainer = make_trainer(tiny_ddpm(), tmp_path, method="sa", overrides=[
        "data.remain_classes=[2,5]", "method.replay_samples=8", "method.replay_steps=2", "method.fisher_samples=4",
        "method.fisher_timesteps=4"])
    trainer.method.setup()
    assert sorted(set(trainer.method.replay.dataset.labels.tolist())) == [2, 5]
    embedding = trainer.method.fisher["class_embedding.weight"]
    assert bool((embedding[[2, 5]].sum(1) > 0).all()) and float(embedding[[0, 1, 3, 4, 6, 7, 8, 9]].abs().max()) == 0
