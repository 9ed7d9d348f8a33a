"""The lasting option: inner attackers (`methods/lasting.py`), the stop rule's relearning probe, RT from the base's
recipe (`recipes/retrained.py`), the card and grid that compare with RT."""

import contextlib
import json

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
    """Each lasting config is the plain one plus the lasting pieces (the probe in the stop rule, the inner attackers
    and the prior mapping); nothing else differs."""
    for path, plain_path in (("configs/digits/ddpm_lasting.yaml", "configs/digits/ddpm_sfron.yaml"),
                             ("configs/digits/sd_lasting.yaml", "configs/digits/sd_sfron.yaml")):
        cfg, plain = build_config(read_yaml(path), []), build_config(read_yaml(plain_path), [])
        assert cfg.method.name == "sfr_on" and cfg.stop.relearn_probe_steps > 0
        assert (cfg.model, cfg.data, cfg.forget, cfg.train, cfg.eval) == (plain.model, plain.data, plain.forget,
                                                                          plain.train, plain.eval)
        lasting = {f for f in vars(cfg.method) if f.startswith(("relearn", "condition_attack", "prior"))}
        assert {f: v for f, v in vars(cfg.method).items() if f not in lasting} == \
            {f: v for f, v in vars(plain.method).items() if f not in lasting}


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


# --- the card says how lasting the forgetting is ------------------------------------------------------------------

def test_card_shows_the_relearning_curve_beside_rt_with_intervals(attacked_suite):
    import json

    from diffunlearn.evaluation.report import relearning_lines
    from diffunlearn.robustness.suite import attack_summary

    result = json.loads((attacked_suite / "robustness.json").read_text())
    summary = attack_summary(result)
    entry = summary["relearning"]
    assert set(entry["curves"]) == {"unlearned", "rt", "base"} and entry["samples_per_point"] == 4
    text = "\n".join(relearning_lines(entry))
    header = next(line for line in text.splitlines() if line.startswith("| k |"))
    assert "unlearned [95% CI]" in header and "RT (never learnt it) [95% CI]" in header
    curve = result["attacks"]["relearning"]["rt"]["curve"]
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(curve)  # one row per (k, step)
    from diffunlearn.evaluation.metrics import share_interval, with_interval

    last = curve[-1]
    assert with_interval(last["forget_accuracy"], share_interval(last["forget_accuracy"], 4)) in rows[-1]
    assert "Steps to FA 0.5: unlearned k=2:" in text and "RT (never learnt it) k=2:" in text


def test_eval_rt_needs_attacks_and_a_known_recipe():
    from diffunlearn.robustness.suite import check_rt

    raw = read_yaml("configs/digits/ddpm_sfron.yaml")
    with pytest.raises(UserError, match="eval.rt 'auto' is attacked beside the unlearned model only with eval.attacks"):
        check_rt(build_config(raw, ["eval.rt=auto"]))
    check_rt(build_config(raw, ["eval.rt=auto", "eval.attacks=[relearning]"]))
    with pytest.raises(UserError, match="give --rt DIR"):
        check_rt(build_config(read_yaml("configs/digits/sd_sfron.yaml"), ["eval.rt=auto", "eval.attacks=[relearning]"]))


def test_lasting_grid_compares_each_run_with_rt(tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    from conftest import TINY_ATTACK_SETTINGS, tiny_overrides

    from diffunlearn.benchmarks.lasting_grid import run_lasting_grid

    tiny_ddpm(seed=1).save_pretrained(tmp_path / "rt")
    small = [*tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir, steps=2), *TINY_ATTACK_SETTINGS,
             "method.relearn_steps=1", "method.condition_attack_steps=1"]
    configs = ["configs/digits/ddpm_sfron.yaml", "configs/digits/ddpm_lasting.yaml"]
    rows = run_lasting_grid(configs, ["7"], [0], tmp_path / "grid", overrides=small, rt=str(tmp_path / "rt"),
                            progress=None)
    assert [r["config"] for r in rows] == ["ddpm_sfron", "ddpm_lasting"]
    for row in rows:
        suite = json.loads((tmp_path / "grid" / row["config"] / "7_seed0_attacks" / "robustness.json").read_text())
        relearning = suite["attacks"]["relearning"]
        rt = {(p["k"], p["step"]): p["forget_accuracy"] for p in relearning["rt"]["curve"]}
        excess = max(p["forget_accuracy"] - rt[(p["k"], p["step"])] for p in relearning["unlearned"]["curve"])
        assert row["relearn_excess"] == pytest.approx(excess)
        assert row["passed_lasting"] == (excess <= 0.10 + 1e-9 and row["inversion"] <= 0.05 + 1e-9
                                         and row["completion"] <= row["rt_completion"] + 0.05 + 1e-9)
    summary = (tmp_path / "grid" / "summary.md").read_text()
    assert "| ddpm_lasting |" in summary and "time ratio" in summary


# --- the stop rule's relearning probe ------------------------------------------------------------------------------

class WeightsSeen:
    """An evaluator (part="forget") that records the weights it was called on and answers from a script."""

    protocol = {}

    def __init__(self, script):
        self.script, self.seen = list(script), []

    def __call__(self, model, part="all"):
        assert part == "forget", "the probe samples the forget targets only"
        self.seen.append({n: p.detach().clone() for n, p in model.trainable_parameters()})
        return {"forget_accuracy": self.script[len(self.seen) - 1]}, {}


def test_probe_fine_tunes_then_puts_every_weight_back(tmp_path):
    from diffunlearn.data import load_digits_splits
    from diffunlearn.evaluation.relearn_probe import RelearnProbe

    model = tiny_ddpm()
    forget_set, _ = load_digits_splits()[0].forget_remain([7])
    before = {n: p.detach().clone() for n, p in model.trainable_parameters()}
    model.network.train()
    evaluator = WeightsSeen([0.6, 0.1])
    probe = RelearnProbe(evaluator, forget_set, steps=3, k=8, lr=1e-3, fa_max=0.25, seed=5)
    first, second = probe(model), probe(model)
    assert (first["passed"], second["passed"]) == (False, True) and first["forget_accuracy"] == 0.6
    assert first["steps"] == 3 and first["k"] == 8
    for name, value in before.items():
        assert torch.equal(dict(model.trainable_parameters())[name], value), f"{name} not restored"
        assert not torch.equal(evaluator.seen[0][name], value) or "class" in name, "judged after the fine-tune"
        assert torch.equal(evaluator.seen[0][name], evaluator.seen[1][name]), "the same fine-tune each time"
    assert model.network.training and all(p.grad is None for _, p in model.trainable_parameters())


class ScriptedProbe:
    def __init__(self, script, gap=0):
        self.script, self.calls, self.gap = list(script), 0, gap

    def __call__(self, model):
        fa = self.script[self.calls]
        self.calls += 1
        return {"forget_accuracy": fa, "passed": fa <= 0.25, "steps": 10, "k": 8}

    def settings(self):
        return {"steps": 10, "k": 8}


def test_a_stop_waits_until_the_target_stays_forgotten_through_the_probe():
    from test_monitor import BASE, Scripted

    from diffunlearn.evaluation.monitor import CONTINUE, STOP, Monitor, StopRule

    probe = ScriptedProbe([0.9, 0.5, 0.1])
    mon = Monitor(tiny_ddpm(), Scripted([(0.5, 2.0), (0.0, 2.0)]), BASE, StopRule(0.05, patience=1), 2, 100,
                  probe=probe)
    assert [mon(step) for step in (1, 3, 5, 7)] == [False, False, False, True]
    assert [h["action"] for h in mon.history] == [CONTINUE, CONTINUE, CONTINUE, STOP]
    assert probe.calls == 3, "probed only where a stop was asked for"
    assert "relearn_probe" not in mon.history[0] and mon.history[1]["relearn_probe"]["forget_accuracy"] == 0.9
    assert [h["best"] for h in mon.history] == [False, False, False, True], "a state that relearns is no fallback"
    assert mon.summary()["relearn_probe"] == {"steps": 10, "k": 8}


def test_unlearn_records_the_probe_of_every_stop_it_asked_for(tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    from conftest import tiny_overrides

    from diffunlearn.runs.unlearn import unlearn_run

    overrides = [o for o in tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir, steps=6) if o != "stop.check_every=0"]
    report = unlearn_run("configs/digits/ddpm_sfron.yaml", tmp_path / "run", overrides + [
        "stop.check_every=2", "stop.patience=1", "stop.forget_accuracy_max=0.99", "stop.fid_ratio_max=null",
        "stop.confirm=false", "stop.forget_samples=4", "stop.retained_samples_per_class=2",
        "stop.num_inference_steps=2", "stop.relearn_probe_steps=2", "stop.relearn_probe_max=0.0"], progress=False)
    stop = report["stop"]
    assert stop["relearn_probe"]["steps"] == 2 and stop["relearn_probe"]["forget_accuracy_max"] == 0.0
    asked = [c for c in stop["checks"] if "relearn_probe" in c]
    assert asked, "every check passes the forget bar here, so each asks the probe"
    for check in asked:
        assert check["action"] == ("stop" if check["relearn_probe"]["passed"] else "continue")


def test_benchmark_rows_run_the_lasting_config_and_its_ablations():
    """The robustness benchmarks' lasting rows are the lasting configs themselves (no copied settings), and each
    ablation row switches off exactly one piece."""
    from diffunlearn.benchmarks.generation_config import load_benchmark_config, row_config

    for bench_path, lasting_path in (("configs/digits/benchmark_ddpm.yaml", "configs/digits/ddpm_lasting.yaml"),
                                     ("configs/digits/benchmark_sd.yaml", "configs/digits/sd_lasting.yaml")):
        bench = load_benchmark_config(bench_path)
        lasting = build_config(read_yaml(lasting_path), [])
        row = row_config(bench, "sfr_on_lasting")
        assert row.method == lasting.method and row.stop == lasting.stop and row.train == lasting.train
        plain = row_config(bench, "sfr_on") if "sfr_on" in bench.methods else build_config(read_yaml(bench.run), [])
        assert not plain.method.lasting and plain.stop.relearn_probe_steps == 0


def test_with_a_probe_only_a_state_that_passed_it_is_a_fallback():
    """A run that never passes the probe ends on its last state: an earlier forgotten-but-relearnable state (the
    lowest retained estimate) is not restored."""
    from test_monitor import BASE, Scripted

    from diffunlearn.evaluation.monitor import Monitor, StopRule

    probe = ScriptedProbe([0.9, 0.9, 0.1, 0.9])
    mon = Monitor(tiny_ddpm(), Scripted([(0.0, 1.0), (0.0, 0.9), (0.0, 0.8), (0.0, 0.7)]), BASE,
                  StopRule(0.05, patience=99), 2, 8, probe=probe)
    for step in (1, 3, 5, 7):
        mon(step)
    assert probe.calls == 4, "each new best candidate is probed"
    assert [h["best"] for h in mon.history] == [False, False, True, False] and mon.best_step == 6
    never = Monitor(tiny_ddpm(), Scripted([(0.0, 1.0), (0.0, 0.9)]), BASE, StopRule(0.05, patience=99), 2, 4,
                    probe=ScriptedProbe([0.9, 0.9]))
    never(1)
    never(3)
    never.finish()
    assert never.best is None and never.restored_step is None
