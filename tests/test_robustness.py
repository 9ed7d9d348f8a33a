"""Robustness attacks: each recovers the target from a model that still knows it, finds nothing in a model that
cannot make it, is deterministic; the suite refuses bad input in one line, resumes after an interruption."""

import json

import pytest
import torch
from conftest import tiny_ddpm, tiny_overrides

from diffunlearn.commands.cli import main
from diffunlearn.config_loading import load_config
from diffunlearn.data.sets import build_sets
from diffunlearn.evaluation.judge_loading import load_judge
from diffunlearn.evaluation.targets import eval_targets
from diffunlearn.models.loading import load_model
from diffunlearn.registry import ATTACKS, get_attack
from diffunlearn.robustness.base import AttackContext

MAIN = "configs/digits/ddpm_sfron.yaml"
# every registered attack for class-conditioned models (the text-only ones: test_prompt_attacks.py); each needs
# its small budget in SMALL below
CLASS_ATTACKS = [name for name in ATTACKS.names() if "class" in get_attack(name).conditionings]
SMALL = {"completion": {"samples": 16, "strengths": [0.3, 0.6], "conditions": ["forget"]},
         "relearning": {"k": [8], "steps": [0, 5], "samples": 16, "num_inference_steps": 5},
         "inversion": {"iterations": 5, "k": 16, "batch_size": 8, "samples": 16, "num_inference_steps": 10}}


def _context(model_path=None, model=None):
    """An AttackContext on the embedded digits DDPM config (embedded judge), attacking `model` (default: the
    model at `model_path`, default the embedded base)."""
    overrides = [f"model.path={model_path}"] if model_path else []
    cfg = load_config(MAIN, overrides)
    base, base_path = load_model(load_config(MAIN))
    model = model if model is not None else load_model(cfg)[0]
    judge = load_judge(cfg.eval)
    forget, _ = eval_targets(cfg, base, judge.labels)
    return AttackContext(cfg, model, lambda: load_model(cfg)[0], judge, forget, build_sets(cfg, base, base_path)[0])


def _attack(name, ctx, **settings):
    cls = get_attack(name)
    config = cls.config_cls(**{**SMALL[name], **settings})
    config.check()
    return cls(config).run(ctx)


@pytest.mark.parametrize("name", CLASS_ATTACKS)
def test_each_attack_recovers_the_target_from_a_model_that_still_knows_it(name):
    result = _attack(name, _context())
    assert result.asr >= 0.9, (name, result.asr, result.curve)
    assert result.budget and result.protocol["seed"] == 0 and result.images is not None


# completion from a light noising (strength 0.3) keeps the target in the image itself: a model of random weights
# then "completes" it too (measured: 0.875 at 0.3, 0.06 at 0.6). That floor is what RT beside the unlearned model
# calibrates (`--rt`); the control here starts from a heavy noising, where the image no longer carries the target.
CONTROL = {"completion": {"strengths": [0.8]}}


@pytest.mark.parametrize("name", CLASS_ATTACKS)
def test_each_attack_reports_asr_0_on_a_model_that_cannot_make_the_target(name):
    """A model of random weights (the digits shape, nothing learnt) gives the judge nothing to recognise."""
    torch.manual_seed(0)
    ctx = _context(model=tiny_ddpm())
    ctx.load = tiny_ddpm
    result = _attack(name, ctx, **CONTROL.get(name, {}))
    assert result.asr == 0.0, (name, result.curve)


@pytest.mark.parametrize("name", CLASS_ATTACKS)
def test_the_same_seed_gives_the_same_asr_and_curve(name):
    first, second = (_attack(name, _context()) for _ in range(2))
    assert first.asr == second.asr and first.curve == second.curve
    assert torch.equal(first.images, second.images)


def test_inversion_leaves_the_network_untouched_and_trainable():
    ctx = _context()
    before = {n: p.detach().clone() for n, p in ctx.model.network.named_parameters()}
    flags = {n: p.requires_grad for n, p in ctx.model.network.named_parameters()}
    _attack("inversion", ctx)
    for name, p in ctx.model.network.named_parameters():
        assert torch.equal(p, before[name]) and p.requires_grad == flags[name], name
    labels = torch.tensor([7, 10])  # no hook left behind: the table's own row again
    assert torch.equal(ctx.model.class_embeddings()[0](labels), ctx.model.network.class_embedding.weight[labels])


# --- the suite: one-line errors, outputs, resume -----------------------------------------------------------------
def _attack_argv(tiny_ddpm_dir, tiny_classifier_dir, out, *extra):
    return ["attack", MAIN, "--model", str(tiny_ddpm_dir), "--output", str(out),
            *tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir), "attack.completion.samples=4",
            "attack.completion.strengths=[0.5]", "attack.relearning.k=[4]", "attack.relearning.steps=[0,2]",
            "attack.relearning.samples=4", "attack.inversion.iterations=2", "attack.inversion.k=4",
            "attack.inversion.samples=4", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--attacks", "completion,banana"], "unknown attack 'banana'; valid: completion, inversion, relearning, ring_a_bell, unlearndiffatk"),
    (["attack.relearning.steps=[-1]"], "attack.relearning.steps must be a non-empty list of step counts >= 0"),
    (["attack.completion.strengths=[1.5]"],
     "attack.completion.strengths must be a non-empty list of numbers in (0, 1)"),
    (["attack.inversion.lr=0"], "attack.inversion.lr must be > 0, got 0"),
    (["attack.relearning.colour=red"], "unknown config key 'colour'"),
    (["--attacks", "completion"], "settings for attack(s) ['inversion', 'relearning'] that are not run; running: "
                                  "completion"),
])
def test_bad_attack_names_and_budgets_are_one_line_errors(capsys, tmp_path, tiny_ddpm_dir, tiny_classifier_dir,
                                                          extra, message):
    out = tmp_path / "attacked"
    with pytest.raises(SystemExit) as info:
        main(_attack_argv(tiny_ddpm_dir, tiny_classifier_dir, out, *extra))
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() and not (tmp_path / ".attacked.partial").exists()


def test_an_attack_that_does_not_fit_the_family_is_refused(capsys, tmp_path, tiny_classifier_dir):
    from test_sd import tiny_sd

    tiny_sd().save_pretrained(tmp_path / "sd")
    with pytest.raises(SystemExit) as info:
        main(["attack", "configs/digits/sd_sfron.yaml", "--model", str(tmp_path / "sd"), "--output",
              str(tmp_path / "out"), "--attacks", "inversion", f"model.path={tmp_path / 'sd'}",
              f"eval.classifier={tiny_classifier_dir}"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert ("attack 'inversion' does not apply to the sd family (text conditioning); valid: completion, relearning, "
            "ring_a_bell, unlearndiffatk" in err)


def test_the_suite_writes_its_report_and_resumes_after_an_interruption(tmp_path, tiny_ddpm_dir, tiny_classifier_dir,
                                                                       monkeypatch, capsys):
    out = tmp_path / "attacked"
    relearning = get_attack("relearning")
    real_run = relearning.run
    monkeypatch.setattr(relearning, "run", lambda self, ctx: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # completion and inversion finish first (names in order)
        main(_attack_argv(tiny_ddpm_dir, tiny_classifier_dir, out))
    partial = tmp_path / ".attacked.partial"
    assert sorted(p.name for p in partial.glob("*.json")) == ["completion.json", "inversion.json"]
    assert not out.exists()

    finished = {n: json.loads((partial / f"{n}.json").read_text()) for n in ("completion", "inversion")}
    for name in ("completion", "inversion"):  # a rerun must not run these again
        monkeypatch.setattr(get_attack(name), "run", lambda self, ctx: pytest.fail("ran a finished attack again"))
    monkeypatch.setattr(relearning, "run", real_run)
    main(_attack_argv(tiny_ddpm_dir, tiny_classifier_dir, out))
    report = json.loads((out / "robustness.json").read_text())
    assert sorted(report["attacks"]) == ["completion", "inversion", "relearning"]
    for name, entry in finished.items():
        assert report["attacks"][name]["asr"] == entry["unlearned"]["asr"]
    for entry in report["attacks"].values():
        assert 0.0 <= entry["asr"] <= 1.0 and 0.0 <= entry["base_asr"] <= 1.0 and entry["unlearned"]["budget"]
    assert report["attacks"]["relearning"]["unlearned"]["curve"][0]["step"] == 0
    assert "| relearning |" in (out / "robustness.md").read_text()
    assert (out / "gallery" / "completion.png").is_file()
    with pytest.raises(SystemExit) as info:  # a finished suite is not overwritten by accident
        main(_attack_argv(tiny_ddpm_dir, tiny_classifier_dir, out))
    assert info.value.code == 2 and "already holds a run" in capsys.readouterr().err


def test_unlearn_runs_the_attacks_it_is_asked_for_and_reports_them(tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    out = tmp_path / "run"
    main(["unlearn", MAIN, "--output", str(out), *tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir),
          "eval.attacks=[completion]"])
    report = json.loads((out / "report.json").read_text())
    suite = json.loads((out / "robustness" / "robustness.json").read_text())
    assert report["robustness"]["completion"]["asr"] == suite["attacks"]["completion"]["asr"]
    assert "| completion |" in (out / "README.md").read_text()


def test_unlearn_refuses_an_attack_that_does_not_exist_before_writing(capsys, tmp_path, tiny_ddpm_dir,
                                                                      tiny_classifier_dir):
    with pytest.raises(SystemExit) as info:
        main(["unlearn", MAIN, "--output", str(tmp_path / "run"), *tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir),
              "eval.attacks=[completion,prompting]"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.endswith("unknown attack 'prompting'; valid: completion, inversion, relearning, "
                                              "ring_a_bell, unlearndiffatk")
    assert not list(tmp_path.iterdir())


def test_the_side_by_side_benchmark_has_a_row_per_method_and_the_base(tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    from diffunlearn.benchmarks.robustness_benchmark import run_robustness_benchmark

    bench = tmp_path / "bench.yaml"
    bench.write_text("run: configs/digits/ddpm_sfron.yaml\nmethods:\n  ga: {}\n")
    result = run_robustness_benchmark(bench, tmp_path / "out", ["completion"],
                                      overrides=tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir),
                                      attack_overrides=["attack.completion.samples=4",
                                                        "attack.completion.strengths=[0.5]"], progress=None)
    assert list(result["rows"]) == ["base", "sfr_on", "ga"]
    table = (tmp_path / "out" / "robustness_table.md").read_text()
    assert table.startswith("| row | FA [95% CI] | FID ratio | unlearning s | stopped at | completion ASR [95% CI] (wall) |")
    ga = json.loads((tmp_path / "out" / "runs" / "ga" / "report.json").read_text())
    assert result["rows"]["ga"]["metrics"]["fid_retained"] == ga["unlearned"]["fid_retained"] and ga["method"] == "ga"
