"""ESD on a tiny Stable Diffusion built from configs: what moves, the target's sign, the frozen base, refusals."""

import copy

import pytest
import torch
from conftest import tiny_ddpm
from helpers import make_trainer, snapshot
from test_sd import ONE, SEVEN, tiny_sd

from diffunlearn.config_loading import build_config, read_yaml
from diffunlearn.data.prompts import PromptImages
from diffunlearn.errors import UserError
from diffunlearn.methods.esd import negative_guidance_target
from diffunlearn.registry import get_method
from diffunlearn.training.trainer import Trainer

SGD = ["train.optimizer=sgd", "train.momentum=0.0", "train.lr=0.05", "train.batch_size=4"]


def esd_trainer(tmp_path, subset="cross_attention", overrides=()):
    raw = read_yaml("configs/digits/sd_sfron.yaml")
    raw["method"] = {"name": "esd"}
    cfg = build_config(raw, [f"model.subset={subset}", "model.lora_rank=2", f"forget.prompts=[{SEVEN!r}]",
                             f"forget.anchors=[{ONE!r}]", "forget.remain_prompts=[]", *SGD, *overrides])
    model = tiny_sd()
    model.set_trainable(subset, lora_rank=2)
    g = torch.Generator().manual_seed(0)
    seven, one = model.tokenize([SEVEN]), model.tokenize([ONE])
    forget = PromptImages(torch.rand(8, 1, 8, 8, generator=g), seven.repeat(8, 1), one.repeat(8, 1))
    remain = PromptImages(torch.rand(8, 1, 8, 8, generator=g), one.repeat(8, 1))
    return Trainer(cfg, model, get_method("esd"), forget, remain, tmp_path, progress=False)


def step_inputs(trainer, step=0):
    batch = trainer.forget_batch(step)
    _, _, t, x_t = trainer.model.noised(batch, trainer.generator(step, 1), True, trainer.shard)
    return x_t, t, trainer.model.condition(batch)


def predictions(network, x_t, t, cond, null):
    with torch.no_grad():
        return (network(x_t, t, encoder_hidden_states=cond).sample,
                network(x_t, t, encoder_hidden_states=null).sample)


def test_negative_guidance_target_formula():
    null, concept = torch.tensor([1.0, 0.0]), torch.tensor([3.0, 2.0])
    torch.testing.assert_close(negative_guidance_target(null, concept, 1.0), torch.tensor([-1.0, -2.0]))
    torch.testing.assert_close(negative_guidance_target(null, concept, 0.0), null)


def test_esd_x_step_moves_only_cross_attention_and_pushes_away_from_the_concept(tmp_path):
    trainer = esd_trainer(tmp_path)
    model = trainer.model
    trainer.method.setup()
    every = {n: p.detach().clone() for n, p in model.network.named_parameters()}
    text = copy.deepcopy(model.pipeline.text_encoder.state_dict())
    x_t, t, cond = step_inputs(trainer)
    null = model.null_condition(cond)
    eps_c, eps_null = predictions(model.network, x_t, t, cond, null)
    logs = trainer.method.training_step(0)
    assert logs["esd_loss"].item() > 0
    moved = {n for n, p in model.network.named_parameters() if not torch.equal(p, every[n])}
    assert moved and all(".attn2." in n for n in moved), sorted(moved - {n for n in moved if ".attn2." in n})
    assert all(torch.equal(v, model.pipeline.text_encoder.state_dict()[k]) for k, v in text.items())
    after_c, after_null = predictions(model.network, x_t, t, cond, null)
    # the concept's prediction moved against the guidance direction eps(c) - eps(null) ...
    assert ((after_c - eps_c) * (eps_c - eps_null)).sum() < 0
    # ... and toward the target, whose distance shrank
    target = negative_guidance_target(eps_null, eps_c, 1.0)
    assert (after_c - target).pow(2).sum() < (eps_c - target).pow(2).sum()
    # null-prompt predictions pass through attn2 too, but the loss only sees the concept's
    assert not torch.equal(after_null, eps_null)


def test_targets_come_from_the_frozen_base_and_weights_are_restored(tmp_path):
    trainer = esd_trainer(tmp_path, subset="all")
    method, model = trainer.method, trainer.model
    base_net = copy.deepcopy(model.network)
    method.setup()
    for step in range(2):
        method.training_step(step)
    x_t, t, cond = step_inputs(trainer, 2)
    current = snapshot(trainer)
    assert any(not torch.equal(p, base_net.state_dict()[n]) for n, p in current.items())
    eps_c, eps_null = predictions(base_net, x_t, t, cond, model.null_condition(cond))
    torch.testing.assert_close(method.targets(x_t, t, cond), negative_guidance_target(eps_null, eps_c, 1.0),
                               atol=1e-5, rtol=1e-5)
    assert all(torch.equal(p, current[n]) for n, p in trainer.params), "the swap must restore the live weights"


def test_lora_targets_disable_the_adapters(tmp_path):
    trainer = esd_trainer(tmp_path, subset="lora")
    method, model = trainer.method, trainer.model
    info = method.setup()
    assert info["esd_stored_base_elements"] == 0, "LoRA needs no stored copy"
    x_t, t, cond = step_inputs(trainer)
    base = method.targets(x_t, t, cond)
    with torch.no_grad():
        for _, p in trainer.params:
            p.add_(0.3)
    torch.testing.assert_close(method.targets(x_t, t, cond), base)
    assert model.network.active_adapters(), "adapters are enabled again after the target"


def test_esd_refuses_class_forgetting(tmp_path):
    with pytest.raises(UserError, match="^method 'esd' forgets prompts only") as info:
        make_trainer(tiny_ddpm(), tmp_path, method="esd")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="method.eta must be >= 0"):
        esd_trainer(tmp_path, overrides=["method.eta=-1"])
