"""`train.compile`: the network runs through torch.compile (inductor, via accelerate) and trains to the weights of
the eager run."""

import pytest
from conftest import tiny_overrides
from safetensors.torch import load_file

from diffunlearn.runs.unlearn import unlearn_run

MAIN = "configs/digits/ddpm_sfron.yaml"
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
# Inductor fuses and reorders float operations; SGD keeps the difference at round-off level (measured: 4.5e-8 with
# the weights moved by 5.3e-2; about 50 s of compilation on the 2-core CPU).
TOLERANCE = 1e-5


@pytest.mark.slow
def test_compiled_run_matches_the_eager_run(tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    overrides = [*tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir, steps=4), "train.optimizer=sgd", "train.lr=0.05"]
    for compiled in (False, True):
        unlearn_run(MAIN, tmp_path / str(compiled), [*overrides, f"train.compile={str(compiled).lower()}"],
                    evaluate=False, progress=False)
    eager, compiled = load_file(tmp_path / "False" / WEIGHTS), load_file(tmp_path / "True" / WEIGHTS)
    base = load_file(tiny_ddpm_dir / "unet" / "diffusion_pytorch_model.safetensors")
    moved = max((eager[k] - base[k]).abs().max().item() for k in eager)
    gap = max((eager[k] - compiled[k]).abs().max().item() for k in eager)
    print(f"compiled vs eager: gap {gap:.2e}, weights moved {moved:.2e}")
    assert moved > 100 * TOLERANCE and gap < TOLERANCE
