"""The lasting option's inner attackers (`methods/lasting.py`) and RT from the base's recipe (`recipes/retrained.py`)."""

import contextlib

import pytest
import torch
from conftest import tiny_ddpm
from helpers import make_trainer, snapshot
from test_families import family_trainer

from diffunlearn.config_loading import build_config, read_yaml
from diffunlearn.errors import UserError
from diffunlearn.training.streams import Stream

BOTH = ["method.relearn_steps=2", "method.condition_attack_steps=2", "method.forget_every=1"]


def stepped(trainer, steps=1):
    trainer.method.setup()
    logs = [trainer.method.training_step(t) for t in range(steps)]
    return snapshot(trainer), logs


@pytest.mark.parametrize("family", ["ddpm", "dit", "sd", "sd3", "sdxl"])
def test_lasting_step_keeps_the_mask_and_changes_the_update(family, tmp_path):
    """With both inner attackers on, masked elements still do not move, their losses are logged, and the step
    differs from the plain one (the terms reach the update); off (the defaults) it is the plain step."""
    common = ["method.remain=false", "method.forget_every=1", "train.optimizer=adam", "method.gamma=1.0"]
    plain = family_trainer(family, tmp_path / "plain", common)
    before = snapshot(plain)
    after_plain, _ = stepped(plain)
    lasting = family_trainer(family, tmp_path / "lasting", [*common, *BOTH])
    after, (logs,) = stepped(lasting)
    assert {"relearned_forget_loss", "attacked_forget_loss", "forget_loss"} <= set(logs)
    mask = lasting.method.mask.tensors
    for name in before:
        frozen = ~mask[name]
        assert torch.equal(after[name][frozen], before[name][frozen]), f"{family}: masked elements of {name} moved"
    assert any(not torch.equal(after[n], after_plain[n]) for n in before), f"{family}: the lasting terms did nothing"


@pytest.mark.parametrize("family", ["ddpm", "sd"])
def test_inner_attackers_leave_no_trace_but_their_gradient(family, tmp_path):
    """Weight 0: the simulated fine-tune and the condition attack run, yet the step equals the plain step exactly
    (weights restored, class-embedding hooks removed, no stray gradient)."""
    plain = family_trainer(family, tmp_path / "plain", ["method.forget_every=1"])
    zero = family_trainer(family, tmp_path / "zero", [*BOTH, "method.relearn_weight=0",
                                                      "method.condition_attack_weight=0"])
    after_plain, _ = stepped(plain, 2)
    after_zero, (logs, _) = stepped(zero, 2)
    assert "relearned_forget_loss" in logs
    for name in after_plain:
        torch.testing.assert_close(after_zero[name], after_plain[name], rtol=0, atol=0)


def test_relearning_term_is_the_forget_gradient_after_a_simulated_fine_tune(tmp_path):
    """The accumulated gradient is the forget loss's gradient at theta' (Adam fine-tune on D_f from theta), and
    theta itself is left as it was."""
    trainer = make_trainer(tiny_ddpm(), tmp_path, ["method.relearn_steps=3", "method.relearn_lr=0.001",
                                                   "method.saliency_mask=false"])
    trainer.method.setup()
    method, params = trainer.method, [p for _, p in trainer.params]
    theta = [p.detach().clone() for p in params]
    loss_fn = lambda stream, cond=None: method.forget_loss(0, stream, cond)  # noqa: E731
    method.inner.accumulate(0, loss_fn, scale=1.0)
    got = [p.grad.detach().clone() for p in params]
    assert all(torch.equal(p, q) for p, q in zip(params, theta)), "theta must be restored"
    trainer.context.zero_grad()
    # theta' by hand: the same Adam steps on the same rows and draws
    batch = {k: v[:8] for k, v in trainer.forget_batch(0).items()}
    adam = torch.optim.Adam(params, lr=0.001)
    for i in range(3):
        trainer.losses(batch, i, stream=Stream.LASTING_RELEARN).mean().backward()
        adam.step()
        adam.zero_grad()
    moved = sum(float((p.detach() - q).abs().sum()) for p, q in zip(params, theta))
    expected = torch.autograd.grad(loss_fn(Stream.LASTING_META), params)
    at_theta = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, q in zip(params, theta):
            p.copy_(q)
    plain = torch.autograd.grad(loss_fn(Stream.LASTING_META), params)
    assert moved > 0 and any(not torch.equal(a, b) for a, b in zip(at_theta, theta))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    assert any(not torch.allclose(e, p) for e, p in zip(expected, plain)), "the gradient is taken at theta'"


def test_class_condition_attack_lowers_the_target_loss_and_restores_the_table(tmp_path):
    trainer = make_trainer(tiny_ddpm(), tmp_path, ["method.condition_attack_steps=5",
                                                   "method.condition_attack_lr=0.1"])
    trainer.method.setup()
    inner, model = trainer.method.inner, trainer.model
    batch = {k: v[:16] for k, v in trainer.forget_batch(0).items()}
    plain = lambda: trainer.losses(batch, 0, stream=Stream.LASTING_ATTACKED).mean().item()  # noqa: E731
    table = model.class_embeddings()[0]
    row = table(torch.tensor([7])).detach().clone()
    before = plain()
    with contextlib.ExitStack() as stack:
        inner._attacked_rows(0, trainer.forget_batch(0), stack)
        attacked = plain()
        assert not torch.equal(table(torch.tensor([7])), row), "the forgotten row is the fitted vector inside"
    assert attacked < before, "the inner attack should find a class vector that denoises the target better"
    assert torch.equal(table(torch.tensor([7])), row) and plain() == before


def test_text_condition_attack_stays_in_its_ball_and_lowers_the_loss(tmp_path):
    trainer = family_trainer("sd", tmp_path, ["method.condition_attack_steps=5", "method.condition_attack_lr=0.1",
                                              "method.condition_attack_radius=0.1"])
    trainer.method.setup()
    batch = trainer.forget_batch(0)
    cond = trainer.model.condition(batch).detach()
    attacked = trainer.method.inner._attacked_condition(0, batch)
    ratio = (attacked - cond).flatten(1).norm(dim=1) / cond.flatten(1).norm(dim=1)
    assert float(ratio.max()) <= 0.1 + 1e-5 and float(ratio.min()) > 0
    loss = lambda c: trainer.losses(batch, 0, stream=Stream.LASTING_ATTACKED, cond=c).mean().item()  # noqa: E731
    assert loss(attacked) < loss(cond)


@pytest.mark.parametrize("override, named", [
    ("method.relearn_steps=-1", "method.relearn_steps"), ("method.relearn_steps=1000", "method.relearn_steps"),
    ("method.condition_attack_steps=2.5", "method.condition_attack_steps"),
    ("method.relearn_lr=0", "method.relearn_lr"), ("method.condition_attack_radius=-0.1",
                                                   "method.condition_attack_radius"),
    ("method.relearn_weight=-1", "method.relearn_weight"),
])
def test_bad_lasting_settings_are_refused(override, named):
    with pytest.raises(UserError, match=named):
        build_config(read_yaml("configs/digits/ddpm_lasting.yaml"), [override])


def test_lasting_configs_turn_the_option_on():
    for path in ("configs/digits/ddpm_lasting.yaml", "configs/digits/sd_lasting.yaml"):
        method = build_config(read_yaml(path), []).method
        assert method.name == "sfr_on" and method.relearn_steps > 0 and method.condition_attack_steps > 0


# --- RT from the base's recipe ------------------------------------------------------------------------------------

def test_rt_is_trained_once_per_recipe_and_classes_and_loads(monkeypatch):
    import dataclasses

    from diffunlearn import registry
    from diffunlearn.recipes import retrained as rt

    calls, real = [], registry.get_recipe("ddpm")

    def counted(recipe, progress=False):
        calls.append(list(recipe.exclude_classes))
        return real.train(recipe, progress=False)

    monkeypatch.setattr(registry, "get_recipe", lambda kind: dataclasses.replace(real, train=counted))
    settings = {"steps": 2, "batch_size": 8, "channels": [8, 8, 8], "warmup_steps": 1}
    first = rt.retrained("ddpm", rt.rt_recipe("ddpm", settings, [7]), progress=lambda _: None)
    again = rt.retrained("ddpm", rt.rt_recipe("ddpm", settings, [7]), progress=lambda _: None)
    other = rt.retrained("ddpm", rt.rt_recipe("ddpm", settings, [3]), progress=lambda _: None)
    assert calls == [[7], [3]] and first == again != other
    from diffunlearn.models.ddpm import ClassConditionalDDPMPipeline

    assert ClassConditionalDDPMPipeline.from_pretrained(first).unet is not None


def test_rt_auto_takes_the_embedded_recipe_and_refuses_other_bases():
    from diffunlearn.recipes.retrained import base_recipe

    cfg = build_config(read_yaml("configs/digits/ddpm_sfron.yaml"), ["forget.classes=[3]"])
    kind, settings = base_recipe(cfg)
    assert kind == "ddpm" and settings["steps"] == 6000 and "command" not in settings
    with pytest.raises(UserError, match="give --rt DIR"):
        base_recipe(build_config(read_yaml("configs/digits/sd_sfron.yaml"), []))
    with pytest.raises(UserError, match="give --rt DIR"):
        base_recipe(build_config(read_yaml("configs/digits/ddpm_sfron.yaml"), ["model.path=some/hub-id"]))
