"""The lasting option's prior mapping (`method.prior_weight`, `methods/lasting.py`): the null condition's prediction on
noised D_f images trained toward the frozen base's prediction guided to an anchor (a retained class, or the anchor
prompt)."""

import pytest
import torch
from conftest import tiny_ddpm
from helpers import make_trainer, snapshot
from test_families import family_trainer

from diffunlearn.config_loading import build_config, read_yaml
from diffunlearn.errors import UserError
from diffunlearn.training.streams import Stream

PRIOR = ["method.prior_weight=1.0", "method.prior_guidance=2.0", "method.prior_batch=8"]


def draws(trainer, step):
    """x0, noise, t, x_t and the batch of the prior term's rows at `step` (its own stream's draws)."""
    batch = {k: v[:8] for k, v in trainer.forget_batch(step).items()}
    return (*trainer.model.noised(batch, trainer.generator(step, Stream.LASTING_PRIOR), trainer.train_cfg.antithetic,
                                  trainer.shard), batch)


def test_at_the_base_the_prior_loss_is_s_squared_times_the_gap_to_the_best_retained_class(tmp_path):
    """Before any update eps = eps_0, so the loss is s^2 ||eps_0(x_t, a) - eps_0(x_t, null)||^2, a per row the
    retained class (never the forgotten 7) whose prediction is closest to the true noise."""
    trainer = make_trainer(tiny_ddpm(), tmp_path, [*PRIOR, "method.prior_guidance=0.5"])
    trainer.method.setup()
    model = trainer.model
    x0, noise, t, x_t, batch = draws(trainer, 3)
    with torch.no_grad():
        def pred(labels):
            return model.predict(x_t, t, model.condition({**batch, "labels": labels}))
        retained = [c for c in range(10) if c != 7]
        errors = torch.stack([(pred(torch.full((8,), c)) - noise).pow(2).flatten(1).sum(1) for c in retained], 1)
        anchor = torch.tensor(retained)[errors.argmin(1)]
        null = model.predict(x_t, t, model.null_condition(model.condition(batch)))
        gap = (pred(anchor) - null).pow(2).flatten(1).sum(1)
        got = trainer.method.inner.prior_loss(3)
    assert 7 not in anchor.tolist()
    torch.testing.assert_close(got, 0.25 * gap.mean())


def test_prior_steps_move_the_null_branch_toward_the_base_target_and_keep_the_base(tmp_path):
    """Remain steps with the term lower it on a fixed draw; the frozen base (the targets' source) stays the
    model's starting weights, and computing a target leaves the live weights as they were."""
    trainer = make_trainer(tiny_ddpm(), tmp_path, [*PRIOR, "method.forget_every=1000", "method.remain_weight=0",
                                                   "train.lr=0.001"])
    start = snapshot(trainer)
    trainer.method.setup()
    inner = trainer.method.inner
    with torch.no_grad():
        before = inner.prior_loss(0).item()
    logs = [trainer.method.training_step(t) for t in range(1, 9)]
    assert all("prior_loss" in log for log in logs)
    live = snapshot(trainer)
    with torch.no_grad():
        after = inner.prior_loss(0).item()
    assert after < before, (before, after)
    assert all(torch.equal(p, live[name]) for name, p in trainer.params), "a target must leave the live weights"
    assert any(not torch.equal(live[n], start[n]) for n in start)
    assert all(torch.equal(b, start[n]) for (n, _), b in zip(trainer.params, inner.base.base))


@pytest.mark.parametrize("family", ["ddpm", "sd"])
def test_prior_mapping_changes_the_remain_step_only_when_on(family, tmp_path):
    """Off (weight 0, the default) the step is the plain one exactly; on, the step differs and logs the term."""
    common = ["method.forget_every=1"]
    plain = family_trainer(family, tmp_path / "plain", common)
    plain.method.setup()
    plain_logs = plain.method.training_step(0)
    on = family_trainer(family, tmp_path / "on", [*common, *PRIOR])
    on.method.setup()
    logs = on.method.training_step(0)
    assert "prior_loss" in logs and "prior_loss" not in plain_logs
    assert any(not torch.equal(p, q) for (_, p), (_, q) in zip(on.params, plain.params))


@pytest.mark.parametrize("override, named", [
    ("method.prior_weight=-1", "method.prior_weight"), ("method.prior_guidance=-0.5", "method.prior_guidance"),
    ("method.prior_batch=0", "method.prior_batch"),
])
def test_bad_prior_settings_are_refused(override, named):
    with pytest.raises(UserError, match=named):
        build_config(read_yaml("configs/digits/ddpm_lasting.yaml"), [override])


def test_prior_mapping_needs_the_remain_step():
    with pytest.raises(UserError, match=r"method.prior_weight 1.0 needs the remain step"):
        build_config(read_yaml("configs/digits/ddpm_lasting.yaml"), ["method.prior_weight=1.0", "method.remain=false"])


def test_prior_mapping_is_refused_under_fsdp(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    trainer = make_trainer(tiny_ddpm(), tmp_path, PRIOR)
    with pytest.raises(UserError, match=r"method.prior_weight 1.0 is not supported under FSDP"):
        trainer.method.setup()
