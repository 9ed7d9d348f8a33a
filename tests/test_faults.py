"""Faults: bad model folders are refused, a non-finite loss stops the run, SIGKILL + same command resumes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_overrides
from diffusers import UNet2DModel
from safetensors.torch import load_file

from diffunlearn.commands.cli import main
from diffunlearn.training.trainer import Trainer

MAIN = "configs/digits/ddpm_sfron.yaml"


def _not_diffusers(src, dst):
    dst.mkdir()
    (dst / "notes.txt").write_text("hello")


def _corrupt_safetensors(src, dst):
    shutil.copytree(src, dst)
    (dst / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage" * 10)


def _pickle_only(src, dst):
    shutil.copytree(src, dst)
    weights = dst / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), dst / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()


@pytest.mark.parametrize("build, message", [
    (_not_diffusers, "cannot load model.path"),
    (_corrupt_safetensors, "cannot load model.path"),
    (_pickle_only, "refusing pickle checkpoint(s) ['unet/diffusion_pytorch_model.bin']"),
])
def test_bad_model_folders_are_refused(capsys, tmp_path, tiny_ddpm_dir, tiny_classifier_dir, build, message):
    model_dir, out = tmp_path / "model", tmp_path / "run"
    build(tiny_ddpm_dir, model_dir)
    with pytest.raises(SystemExit) as info:
        main(["unlearn", MAIN, "--output", str(out), *tiny_overrides(model_dir, tiny_classifier_dir),
              f"model.path={model_dir}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists() and not (tmp_path / ".run.partial").exists()


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(capsys, monkeypatch, tmp_path,
                                                                          tiny_ddpm_dir, tiny_classifier_dir):
    real_losses = Trainer.losses
    monkeypatch.setattr(Trainer, "losses", lambda self, batch, step, stream, **kw:
                        real_losses(self, batch, step, stream, **kw) * (float("nan") if step >= 3 else 1.0))
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["unlearn", MAIN, "--output", str(out), *tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir, steps=6)])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar: one line
    assert info.value.code == 3 and last.startswith("diffunlearn: error: non-finite loss at step 3"), last
    checkpoints = tmp_path / ".run.partial" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step_1"], "only the last good checkpoint remains"
    assert not out.exists()


def _unlearn_cmd(out, model_dir, classifier_dir):
    overrides = [o for o in tiny_overrides(model_dir, classifier_dir, steps=60) if not o.startswith("train.check")]
    return [sys.executable, "-m", "diffunlearn", "unlearn", MAIN, "--output", str(out), "--no-eval", *overrides,
            "train.checkpoint_every=5"]


def test_sigkill_then_same_command_resumes_to_identical_weights(tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    # one thread: a tiny model gains nothing from two, and under `make test`'s two workers two would oversubscribe
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DIFFUNLEARN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    subprocess.run(_unlearn_cmd(tmp_path / "straight", tiny_ddpm_dir, tiny_classifier_dir), env=env, check=True,
                   capture_output=True)
    cmd = _unlearn_cmd(tmp_path / "killed", tiny_ddpm_dir, tiny_classifier_dir)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / ".killed.partial" / "checkpoints" / "step_9" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run must be killed mid-way (it finished first)"
    assert not (tmp_path / "killed").exists()
    done = [int(d.name.split("_")[1]) for d in marker.parents[1].glob("step_*") if (d / "trainer_state.json").exists()]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    report = json.loads((tmp_path / "killed" / "report.json").read_text())
    assert report["resumed"] and report["method_setup"]["first_step"] == max(done) + 1 > 0, (done, report)
    a = UNet2DModel.from_pretrained(tmp_path / "straight", subfolder="unet")
    b = UNet2DModel.from_pretrained(tmp_path / "killed", subfolder="unet")
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name
