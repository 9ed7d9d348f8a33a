"""A run interrupted after a checkpoint and resumed with the same command ends with identical weights."""

import pytest
import torch
from conftest import tiny_overrides
from diffusers import UNet2DModel

from diffunlearn.runs.unlearn import unlearn_run
from diffunlearn.methods.sfr_on import SFROn

MAIN = "configs/digits/ddpm_sfron.yaml"


class Interrupted(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch, tiny_ddpm_dir,
                                                             tiny_classifier_dir):
    overrides = tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir, steps=6)
    unlearn_run(MAIN, tmp_path / "straight", overrides, evaluate=False, progress=False)

    real_step = SFROn.training_step

    def failing_step(self, step):
        if step == 3:
            raise Interrupted()
        return real_step(self, step)

    monkeypatch.setattr(SFROn, "training_step", failing_step)
    with pytest.raises(Interrupted):
        unlearn_run(MAIN, tmp_path / "resumed", overrides, evaluate=False, progress=False)
    partial = tmp_path / ".resumed.partial"
    assert (partial / "checkpoints" / "step_1" / "trainer_state.json").is_file()
    assert not (tmp_path / "resumed").exists(), "an unfinished run is never in the output folder"
    monkeypatch.setattr(SFROn, "training_step", real_step)
    report = unlearn_run(MAIN, tmp_path / "resumed", overrides, evaluate=False, progress=False)
    assert report["resumed"] and report["method_setup"]["first_step"] == 2

    a = UNet2DModel.from_pretrained(tmp_path / "straight", subfolder="unet")
    b = UNet2DModel.from_pretrained(tmp_path / "resumed", subfolder="unet")
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name


def test_a_run_stopped_in_evaluation_resumes_without_training_again(tmp_path, monkeypatch, tiny_ddpm_dir,
                                                                    tiny_classifier_dir):
    from diffunlearn.evaluation.evaluator import Evaluator

    overrides = tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir, steps=4)
    real_call = Evaluator.__call__

    def failing_call(self, model):
        raise Interrupted()

    monkeypatch.setattr(Evaluator, "__call__", failing_call)
    with pytest.raises(Interrupted):
        unlearn_run(MAIN, tmp_path / "run", overrides, progress=False)
    partial = tmp_path / ".run.partial"
    assert (partial / "trained.json").is_file() and not (partial / "checkpoints").exists()
    assert not (tmp_path / "run").exists()
    saved = UNet2DModel.from_pretrained(partial, subfolder="unet")

    monkeypatch.setattr(Evaluator, "__call__", real_call)
    monkeypatch.setattr(SFROn, "training_step", lambda self, step: pytest.fail("the rerun trained again"))
    report = unlearn_run(MAIN, tmp_path / "run", overrides, progress=False)
    assert report["resumed"] and report["timing"]["unlearning"] > 0 and report["timing"]["evaluation"] > 0
    assert 0 <= report["unlearned"]["forget_accuracy"] <= 1
    final = UNet2DModel.from_pretrained(tmp_path / "run", subfolder="unet")
    for (name, p), (_, q) in zip(saved.named_parameters(), final.named_parameters()):
        assert torch.equal(p, q), name
