"""Run folders read back: every entry point given a run that forgot a non-default target (class 3, not the config's
7) names that target and scores it; a CONFIG naming another target is refused; a finished result is reused only
when its identity (config, budgets, weights, version) is the same."""

import json

import pytest
from conftest import tiny_ddpm, tiny_overrides
from test_api import FAST, weights_hash

import diffunlearn
from diffunlearn.commands.cli import main
from diffunlearn.errors import UserError
from diffunlearn.evaluation.metrics import share_interval
from diffunlearn.robustness import suite

MAIN = "configs/digits/ddpm_sfron.yaml"
CHEAP = ["--attacks", "completion", "attack.completion.samples=4", "attack.completion.strengths=[0.5]"]


@pytest.fixture(scope="module")
def run_three(tmp_path_factory, tiny_ddpm_dir, tiny_classifier_dir):
    """A CLI run that forgot class 3 (the config says 7); its base and judge live outside the working folder, so its
    recorded config names them `<local>/NAME` and commands are given them again as overrides."""
    out = tmp_path_factory.mktemp("runs") / "three"
    main(["unlearn", MAIN, "--output", str(out), *tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir),
          "forget.classes=[3]", "seed=1"])
    return out


def paths(tiny_ddpm_dir, tiny_classifier_dir) -> list:
    return [f"model.path={tiny_ddpm_dir}", f"eval.classifier={tiny_classifier_dir}"]


def test_evaluate_a_run_folder_scores_its_own_target(run_three, tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    report = json.loads((run_three / "report.json").read_text())
    out = tmp_path / "eval.json"
    main(["evaluate", "--model", str(run_three), "--output", str(out), *paths(tiny_ddpm_dir, tiny_classifier_dir)])
    result = json.loads(out.read_text())
    assert result["forget_targets"] == [3] and result["protocol"]["forget_targets"] == [3]
    for key in ("forget_accuracy", "retained_accuracy", "fid_retained"):
        assert result["metrics"][key] == pytest.approx(report["unlearned"][key], rel=1e-6), key


def test_a_config_naming_another_target_is_refused(run_three, tmp_path, capsys, tiny_ddpm_dir, tiny_classifier_dir):
    for command in (["evaluate", MAIN, "--model", str(run_three), "--output", str(tmp_path / "e.json")],
                    ["attack", MAIN, "--model", str(run_three), "--output", str(tmp_path / "a"), *CHEAP]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, *paths(tiny_ddpm_dir, tiny_classifier_dir)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "forget.classes [7] in CONFIG, [3] in the run" in err[0], err
    assert not list(tmp_path.iterdir()), "nothing is written"


def test_evaluate_does_not_overwrite_a_file_without_the_flag(run_three, tmp_path, capsys, tiny_ddpm_dir,
                                                             tiny_classifier_dir):
    out = tmp_path / "eval.json"
    out.write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", str(run_three), "--output", str(out), *paths(tiny_ddpm_dir,
                                                                                  tiny_classifier_dir)])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err and out.read_text() == "mine"


def test_a_run_whose_base_is_gone_asks_for_it(run_three, tmp_path, tiny_classifier_dir):
    with pytest.raises(UserError, match=r"started from model.path '<local>/tiny_ddpm\d*'.*model.path=FOLDER"):
        suite.plan_suite(None, run_three, ["completion"], [f"eval.classifier={tiny_classifier_dir}"])


def test_attack_a_run_folder_attacks_its_own_target_and_reuses_only_the_same_identity(
        run_three, tmp_path, tiny_ddpm_dir, tiny_classifier_dir, monkeypatch):
    out = tmp_path / "attacks"
    main(["attack", "--model", str(run_three), "--output", str(out), *CHEAP,
          *paths(tiny_ddpm_dir, tiny_classifier_dir)])
    first = json.loads((out / "robustness.json").read_text())
    assert first["forget_targets"] == ["three"] and first["identity"]["config"]["forget"]["classes"] == [3]
    entry = first["attacks"]["completion"]  # every ASR with its Wilson interval, from the samples behind it
    assert entry["unlearned"]["samples"] == 4 and entry["asr_ci95"] == share_interval(entry["asr"], 4)
    assert entry["base"]["asr_ci95"] == share_interval(entry["base"]["asr"], 4)
    assert f"{entry['asr']:.3f} [" in (out / "robustness.md").read_text()

    # a benchmark's reuse: the same identity is read back (the suite does not run), another budget runs again
    overrides = paths(tiny_ddpm_dir, tiny_classifier_dir)
    again = suite.suite_result(None, run_three, out, ["completion"], [*overrides, *CHEAP[2:]], progress=None)
    assert again == first
    ran = []
    real = suite.run_suite
    monkeypatch.setattr(suite, "run_suite", lambda *a, **k: ran.append(1) or real(*a, **k))
    changed = suite.suite_result(None, run_three, out, ["completion"],
                                 [*overrides, "attack.completion.samples=2", "attack.completion.strengths=[0.5]"],
                                 progress=None)
    assert ran == [1] and changed["attacks"]["completion"]["unlearned"]["budget"] != \
        first["attacks"]["completion"]["unlearned"]["budget"]
    assert json.loads((out / "robustness.json").read_text()) == changed, "the folder holds the new numbers"


def test_api_run_folder_brings_its_config_and_its_base(tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    pipe = diffunlearn.from_pretrained(str(tiny_ddpm_dir))
    settings = {**FAST, "eval.classifier": str(tiny_classifier_dir), "train.lr": 0.000123}
    result = diffunlearn.unlearn(pipe, forget=[3], steps=2, progress=False, output=tmp_path / "run",
                                 overrides=settings)
    assert result.report["forget_classes"] == [3] and result.report["protocol"]["forget_targets"] == [3]
    # evaluate without base=: the run's base (the input pipeline's folder), the run's target and protocol
    scored = diffunlearn.evaluate(result.pipeline, overrides={"eval.classifier": str(tiny_classifier_dir)})
    assert scored["forget_targets"] == [3]
    for key in ("forget_accuracy", "retained_accuracy", "fid_retained"):
        assert scored["metrics"][key] == pytest.approx(result.report["unlearned"][key], rel=1e-6), key
    # a loaded run folder starts from the run's recorded config (its lr), not from a preset
    again = diffunlearn.from_pretrained(str(tmp_path / "run"))
    second = diffunlearn.unlearn(again, forget=[5], steps=1, evaluate=False, progress=False)
    assert second.report["config"]["train"]["lr"] == 0.000123 and second.report["forget_classes"] == [5]


@pytest.mark.parametrize("forget, message", [([7.5], r"7\.5 is not a class id"), ([True], "True is not a class id"),
                                             ("seven", "has no class names")])
def test_api_class_ids_are_integers(forget, message, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with pytest.raises(UserError, match=message):
        diffunlearn.unlearn(tiny_ddpm().pipeline, forget=forget)
    assert not list(tmp_path.iterdir()), "no temporary folder is left behind"


def test_api_accepts_numpy_and_torch_integers(tmp_path):
    import numpy as np
    import torch

    pipe = tiny_ddpm().pipeline
    before = weights_hash(pipe)
    for forget in (np.int64(3), [torch.tensor(3)]):
        result = diffunlearn.unlearn(pipe, forget=forget, steps=1, evaluate=False, progress=False,
                                     config=MAIN, overrides=FAST)
        assert result.report["forget_classes"] == [3]
    assert weights_hash(pipe) == before


def test_api_bad_sources_are_one_line_user_errors(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    cases = [(str(tmp_path / "empty"), "holds no model_index.json"),
             ("nobody/no-such-model", "cannot get 'nobody/no-such-model' from the Hub"),
             (42, "give a folder, a Hub id or embedded:NAME")]
    for source, message in cases:
        with pytest.raises(UserError, match=message) as info:
            diffunlearn.from_pretrained(source)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="neither a pipeline nor a YAML config file"):
        diffunlearn.unlearn("hello", forget=[7])
    dit = diffunlearn.from_pretrained("embedded:digits/dit")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with pytest.raises(UserError, match=r"unknown class name\(s\) \['sevn'\]; valid: eight, five"):
        diffunlearn.unlearn(dit, forget=["sevn"])
    assert not list((tmp_path / "tmp").iterdir())


def test_a_prompt_asked_to_be_forgotten_leaves_the_presets_remain_prompts(tmp_path):
    """The SD preset keeps "three" among its remain prompts; forgetting it drops it there (the report says so), and
    `remain=` sets the list."""
    from test_sd import tiny_sd

    pipe = tiny_sd().pipeline
    three = "a handwritten digit three"
    result = diffunlearn.unlearn(pipe, forget=three, anchor="a handwritten digit one", steps=1, evaluate=False,
                                 progress=False, config="configs/digits/sd_sfron.yaml", overrides=FAST)
    assert result.report["forget_prompts"] == [three]
    assert three not in result.report["config"]["forget"]["remain_prompts"]
    assert any(three in note for note in result.report["notes"])
    chosen = diffunlearn.unlearn(pipe, forget=three, anchor="a handwritten digit one",
                                 remain=["a handwritten digit two"], steps=1, evaluate=False, progress=False,
                                 config="configs/digits/sd_sfron.yaml", overrides=FAST)
    assert chosen.report["config"]["forget"]["remain_prompts"] == ["a handwritten digit two"]
    assert "notes" not in chosen.report
    with pytest.raises(UserError, match="both forgotten and kept"):
        diffunlearn.unlearn(pipe, forget=three, anchor="a handwritten digit one", remain=[three])
