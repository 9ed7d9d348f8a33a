"""The `diffunlearn unlearn` command end to end on tiny models, and its refusals of bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides
from diffusers import UNet2DModel

from diffunlearn.assets import sha256_folder
from diffunlearn.commands.cli import main
from diffunlearn.models.ddpm import ClassConditionalDDPMPipeline

MAIN = "configs/digits/ddpm_sfron.yaml"


def test_end_to_end_run_writes_pipeline_report_gallery_and_card(tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    base_hashes = sha256_folder(tiny_ddpm_dir)
    out = tmp_path / "run"
    main(["unlearn", MAIN, "--output", str(out), *tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir),
          "forget.classes=[3]", "seed=1"])
    assert sha256_folder(tiny_ddpm_dir) == base_hashes, "the base model must never be written"
    report = json.loads((out / "report.json").read_text())
    for side in ("base", "unlearned"):
        for key in ("forget_accuracy", "retained_accuracy", "fid_retained"):
            assert isinstance(report[side][key], float)
    proto = report["protocol"]
    assert len(proto["judge"]["weights_sha256"]) == 64
    for key in ("feature_dim", "fid_real_images", "fid_generated_images", "sampler",
                "num_inference_steps", "guidance_scale", "eval_seed", "seed_rule"):
        assert key in proto
    assert proto["forget_targets"] == [3] and proto["fid_generated_images"] == 9 * 4
    assert set(report["timing"]) == {"mask", "unlearning", "stop_checks", "evaluation"}
    assert report["config"]["forget"]["classes"] == [3] and report["config"]["seed"] == 1
    from diffunlearn.evaluation.metrics import wilson_interval

    n = proto["forget_samples_per_target"] * len(proto["forget_targets"])  # FA's interval from its own counts
    for side in ("base", "unlearned"):
        fa = report[side]["forget_accuracy"]
        assert report[side]["forget_accuracy_ci95"] == wilson_interval(round(fa * n), n)
        low, high = report[side]["retained_accuracy_ci95"]
        assert low <= report[side]["retained_accuracy"] <= high
    assert yaml.safe_load((out / "config.yaml").read_text()) == report["config"]
    assert len((out / "losses.jsonl").read_text().splitlines()) == 4
    for name in ("grid.png", "index.html", "base_3.png", "unlearned_3.png"):
        assert (out / "gallery" / name).is_file()
    assert "FORGOTTEN" in (out / "gallery" / "index.html").read_text()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers") and "forget_accuracy" in card
    UNet2DModel.from_pretrained(out, subfolder="unet")
    pipe = ClassConditionalDDPMPipeline.from_pretrained(out)
    assert len(pipe([3], num_inference_steps=2).images) == 1
    assert not list(tmp_path.glob(".run.partial")), "the partial folder is moved into place"

    # `diffunlearn evaluate` scores the output folder under the same protocol: the report's unlearned numbers
    evaluated = tmp_path / "eval" / "unlearned.json"
    main(["evaluate", MAIN, "--model", str(out), "--output", str(evaluated),
          *tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir), "forget.classes=[3]", "seed=1"])
    again = json.loads(evaluated.read_text())
    assert again["protocol"] == report["protocol"] and again["model"] == f"<local>/{out.name}"  # no absolute path
    for key in ("forget_accuracy", "retained_accuracy", "fid_retained"):
        assert again["metrics"][key] == pytest.approx(report["unlearned"][key], rel=1e-6), key


def _refused(capsys, argv, out_dir, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out_dir.exists() or not any(out_dir.iterdir()), "nothing may be written"
    assert not list(out_dir.parent.glob(f".{out_dir.name}.partial"))


@pytest.mark.parametrize("extra, message", [
    (["forget.classes=[12]"], "forget.classes [12] out of range; valid: 0..9"),
    (["train.stepz=3"], "unknown config key 'train.stepz'; valid keys here: train.steps"),
    (["method.name=forgetit"], "unknown method 'forgetit'; valid: "),
    (["model.path=/no/such/model"], "model path '/no/such/model' does not exist"),
    (["model.family=gan"], "unknown model family 'gan'; valid: classifier, ddpm, dit, sd"),
    (["train.steps=abc"], "bad value for config key 'train.steps'"),
    (["train.lr=-0.1"], "train.lr must be > 0, got -0.1"),
    (["train.steps=0"], "train.steps must be > 0, got 0"),
    (["forget.classes=[]"], "forget.classes and forget.prompts are both empty"),
    (["forget.classes=[3,3]"], "forget.classes must be distinct non-negative class ids, got [3, 3]"),
    (["data.remain_classes=[3,7]"], "data.remain_classes [3, 7] and forget.classes [7] overlap"),
    (["forget.prompts=[a handwritten digit seven]"], "give forget.classes [7] or forget.prompts"),
    (["model.subset=lora"], "unknown model.subset for the ddpm family 'lora'; valid: all"),
    (["eval.judge=oracle"], "unknown eval.judge 'oracle'; valid: clip, digits, image-classification"),
    (["eval.classifier=/no/such/judge"], "/no/such/judge"),
    (["eval.fid_features=inception", "eval.inception_weights=/no/such.pth"],
     "eval.inception_weights '/no/such.pth' is not a file"),
    (["data.remain_classes=[3]", "eval.retained_samples_per_class=1"],
     "eval.retained_samples_per_class=1 gives 1 retained image in all for 1 retained target(s); FID needs at least 2"),
    (["eval.guidance_scale=nan"], "config key 'eval.guidance_scale' must be a finite number, got nan"),
    (["train.batch_size=1000000000"], "train.batch_size 1000000000 is larger than the forget / remain sets"),
    (["eval.forget_samples=1000000000"], "eval.forget_samples / eval.retained_samples_per_class ask for up to"),
    (["data.name=generated", "data.samples_per_target=2000000000"], "data.samples_per_target ask for up to"),
    (["stop.check_every=5", "stop.forget_samples=0"], "stop.forget_samples must be > 0, got 0"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, tmp_path, tiny_ddpm_dir, tiny_classifier_dir,
                                                            extra, message):
    out = tmp_path / "run"
    argv = ["unlearn", MAIN, "--output", str(out), *tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir), *extra]
    _refused(capsys, argv, out, message)


def test_unwritable_output_is_refused(capsys, tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    out = Path("/sys/diffunlearn-run")  # not writable even for root (permission bits are not enough)
    argv = ["unlearn", MAIN, "--output", str(out), *tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir)]
    _refused(capsys, argv, out, "--output '/sys/diffunlearn-run' is not writable")


def test_existing_run_is_not_overwritten_without_flag(capsys, tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.json").write_text("{}")
    argv = ["unlearn", MAIN, "--output", str(out), *tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir)]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "already holds a run; pass --overwrite" in capsys.readouterr().err
    assert (out / "report.json").read_text() == "{}"
    main(argv + ["--overwrite", "--no-eval"])
    assert (out / "model_index.json").is_file() and not (out / "report.json").read_text() == "{}"


def test_console_entry_point_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diffunlearn", "unlearn", MAIN, "--output", str(tmp_path / "x"),
                           "method.name=nope"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("diffunlearn: error: unknown method 'nope'; valid: ")
    assert "sfr_on" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
