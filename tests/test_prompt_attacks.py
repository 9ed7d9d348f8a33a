"""Prompt attacks (UnlearnDiffAtk, Ring-A-Bell) on the text-conditioned families: their pieces against exact
oracles, each recovers the target from the embedded SD layout that still knows it, finds nothing in a model that
cannot make it, is deterministic; bad settings are one-line errors before anything runs."""

import dataclasses

import pytest
import torch
from diffusers import UNet2DConditionModel
from test_sd import tiny_sd

from diffunlearn.commands.cli import main
from diffunlearn.config_loading import load_config
from diffunlearn.data.sets import build_sets
from diffunlearn.evaluation.judge_loading import load_judge
from diffunlearn.evaluation.targets import eval_targets
from diffunlearn.models.loading import load_model
from diffunlearn.registry import ATTACKS, get_attack
from diffunlearn.robustness.base import AttackContext
from diffunlearn.robustness.ring_a_bell import genetic_search
from diffunlearn.robustness.unlearndiffatk import SampledOneHot, prefixed, project_simplex, timestep_grid

SD = "configs/digits/sd_sfron.yaml"
SMALL = {"unlearndiffatk": {"cases": 8, "timesteps": 4, "iterations": 10, "num_inference_steps": 10},
         "ring_a_bell": {"generations": 100, "samples": 16, "num_inference_steps": 10}}

# every registered attack that only applies to text-conditioned models (the others: test_robustness.py)
TEXT_ATTACKS = [name for name in ATTACKS.names() if get_attack(name).conditionings == ("text",)]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """(run config, base model, judge, forget targets, D_f) of the embedded SD config, built once per module (D_f
    is the base model's generated set, made in a cache folder of this module's own)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIFFUNLEARN_CACHE", str(tmp_path_factory.mktemp("cache")))
        # one remain prompt: D_f (all the attacks read) is the same set, D_r (none reads) is generated for 2 prompts
        cfg = load_config(SD, ['forget.remain_prompts=["a handwritten digit two"]'])
        base, base_path = load_model(cfg)
        judge = load_judge(cfg.eval)
        forget, _ = eval_targets(cfg, base, judge.labels)
        return cfg, base, judge, forget, build_sets(cfg, base, base_path)[0]


def _context(embedded, model=None):
    cfg, base, judge, forget, forget_set = embedded
    model = base if model is None else model
    return AttackContext(cfg, model, lambda: model, judge, list(forget), forget_set)


def _attack(name, ctx, **settings):
    cls = get_attack(name)
    config = cls.config_cls(**{**SMALL[name], **settings})
    config.check()
    cls.check_model(config, ctx.model, ctx.cfg)
    return cls(config).run(ctx)


# --- pieces against exact oracles ----------------------------------------------------------------------------------
def test_relaxed_tokens_through_the_embedding_lookup_give_the_stock_prompt_encoding():
    model = tiny_sd()
    ids = model.tokenize(["a handwritten digit seven", "a digit"])
    table = model.token_embedding_table()
    embeds = table[ids].clone().requires_grad_(True)
    encoded = model.encode_token_embeddings(ids, embeds)
    assert torch.allclose(encoded, model.encode_prompt_ids(ids), atol=1e-6)
    encoded.sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    assert torch.equal(model.encode_prompt_ids(ids), model.encode_prompt_ids(ids))  # no hook left behind


def _bisection(a, eps=1.0, xi=1e-10):
    """The reference's projection: bisection for mu with sum(clip(a - mu, 0, 1)) = 1."""
    lo, hi = (a - 1).min().item(), a.max().item()
    while hi - lo > xi:
        mu = (lo + hi) / 2
        lo, hi = (mu, hi) if (a - mu).clamp(0, 1).sum() > eps else (lo, mu)
    return (a - (lo + hi) / 2).clamp(0, 1)


def test_simplex_projection_equals_the_reference_bisection():
    v = torch.randn(6, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    projected = project_simplex(v)
    assert torch.allclose(projected.sum(-1), torch.ones(6, dtype=torch.float64)) and (projected >= 0).all()
    for row, out in zip(v, projected):
        assert torch.allclose(out, _bisection(row), atol=1e-8)
    assert torch.allclose(project_simplex(projected), projected)  # points of the simplex stay


def test_sampled_tokens_are_one_hot_and_pass_the_gradient_clipped():
    probs = project_simplex(torch.rand(3, 4, 7)).requires_grad_(True)
    one_hot = SampledOneHot.apply(probs, torch.Generator().manual_seed(0))
    assert torch.equal(one_hot.sum(-1), torch.ones(3, 4)) and set(one_hot.unique().tolist()) == {0.0, 1.0}
    assert (probs.detach()[one_hot.bool()] > 0).all()  # only tokens the relaxation gives weight to
    (one_hot * torch.linspace(-3, 3, 7)).sum().backward()
    assert torch.equal(probs.grad, torch.linspace(-3, 3, 7).clamp(-1, 1).expand(3, 4, 7))


def test_prefix_goes_after_the_start_token_and_drops_padding():
    ids = torch.tensor([[0, 5, 6, 1, 1, 1, 1]])
    assert prefixed(ids, torch.tensor([[8, 9]])).tolist() == [[0, 8, 9, 5, 6, 1, 1]]
    assert timestep_grid(1000, 50)[:3] == [10, 30, 50] and timestep_grid(1000, 50)[-1] == 990


def test_the_genetic_search_finds_the_prompt_of_a_target_embedding():
    """With eta = 0 the target is a real prompt's embedding: the search must get close to it (distance far below
    a random prompt's) using real tokens only."""
    model = tiny_sd()
    ids = model.tokenize(["seven digit seven"])
    goal = model.encode_prompt_ids(ids)[0].double()
    tok = model.pipeline.tokenizer
    special = model.special_token_ids()
    candidates = torch.tensor([i for i in range(len(tok)) if i not in special])
    cfg = dataclasses.replace(get_attack("ring_a_bell").config_cls(), generations=60, population=100)
    found, distance = genetic_search(model.encode_prompt_ids, goal, tok.bos_token_id, tok.eos_token_id, candidates,
                                     3, cfg, torch.Generator().manual_seed(0))
    random_prompts = torch.cat([torch.full((20, 1), tok.bos_token_id), candidates[torch.randint(len(candidates),
                               (20, 3), generator=torch.Generator().manual_seed(1))],
                                torch.full((20, ids.shape[1] - 4), tok.eos_token_id)], 1)
    random_distance = (model.encode_prompt_ids(random_prompts).double() - goal).pow(2).sum((1, 2)).min().item()
    assert distance < 0.25 * random_distance, (distance, random_distance)
    assert found[0] == tok.bos_token_id and (found[4:] == tok.eos_token_id).all()
    assert not set(found[1:4].tolist()) & special


# --- the attacks on the embedded SD layout -------------------------------------------------------------------------
@pytest.mark.parametrize("name", TEXT_ATTACKS)
def test_each_prompt_attack_recovers_the_target_from_a_model_that_still_knows_it(name, embedded):
    result = _attack(name, _context(embedded))
    assert result.asr >= 0.9, (name, result.asr, result.curve)
    assert result.budget and result.protocol["seed"] == 0 and result.images is not None


def test_unlearndiffatk_finds_tokens_that_turn_another_prompt_into_the_target(embedded):
    """The prompt asks for "one"; the judge counts "seven": only the optimised prefix can bring the seven."""
    ctx = _context(embedded)
    target = ctx.forget[0]
    ctx.forget = [dataclasses.replace(target, condition=ctx.model.tokenize(["a handwritten digit one"])[0])]
    result = _attack("unlearndiffatk", ctx, timesteps=10, iterations=20)
    assert result.curve[0]["rounds"][0]["asr"] <= 0.125  # the plain prompt draws ones
    assert result.asr >= 0.5, result.curve


def _random_unet_model():
    model, _ = load_model(load_config(SD))
    torch.manual_seed(0)
    model.pipeline.unet = UNet2DConditionModel(**model.pipeline.unet.config)
    return model


@pytest.mark.parametrize("name", TEXT_ATTACKS)
def test_each_prompt_attack_reports_asr_0_on_a_model_that_cannot_make_the_target(name, embedded):
    result = _attack(name, _context(embedded, _random_unet_model()))
    assert result.asr == 0.0, (name, result.curve)


@pytest.mark.parametrize("name", TEXT_ATTACKS)
def test_the_same_seed_gives_the_same_prompt_attack_result(name, embedded):
    first, second = (_attack(name, _context(embedded)) for _ in range(2))
    assert first.asr == second.asr and first.curve == second.curve and torch.equal(first.images, second.images)


@pytest.mark.parametrize("extra, message", [
    (["attack.unlearndiffatk.k=20"], "attack.unlearndiffatk.k=20 does not fit: the forget prompt 'a handwritten "
                                     "digit seven' takes 6 of the tokenizer's 16 tokens; use k <= 10"),
    (["attack.unlearndiffatk.timesteps=5000"], "attack.unlearndiffatk.timesteps=5000 is more than the model's 1000"),
    (["attack.ring_a_bell.pairs=[[a handwritten digit seven,a purple digit]]"],
     "prompt 'a purple digit' has words the tokenizer cannot encode: purple"),
    (["attack.ring_a_bell.length=15"], "attack.ring_a_bell.length=15 does not fit the tokenizer's prompts; use at "
                                       "most 14"),
    (["attack.ring_a_bell.mutation=2"], "attack.ring_a_bell.mutation must be a probability in [0, 1], got 2"),
])
def test_bad_prompt_attack_settings_are_one_line_errors(capsys, tmp_path, extra, message):
    out = tmp_path / "attacked"
    with pytest.raises(SystemExit) as info:
        main(["attack", SD, "--model", "embedded:digits/sd", "--output", str(out), "--attacks",
              "unlearndiffatk,ring_a_bell", *extra])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() and not (tmp_path / ".attacked.partial").exists()
