"""FSDP2: a 2-process CPU run (torchrun, gloo, sharded parameters) gives the weights and masks of a 1-process run.

accelerate 1.15 enables FSDP only on accelerators; `diffunlearn.distributed.make_accelerator` switches a CPU process
group to FSDP2 when FSDP is asked for (ACCELERATE_USE_FSDP=true), which is how these tests shard on CPU.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_overrides
from helpers import folder_digest
from safetensors.torch import load_file

from diffunlearn.runs.unlearn import unlearn_run
from diffunlearn.distributed import kth_largest

MAIN = "configs/digits/ddpm_sfron.yaml"
WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
# As under DDP (tests/test_distributed.py): sums over a batch split in two differ in the last bits, which SGD keeps
# at round-off level. Measured with FSDP2: 1.4e-7 (SFR-on, weights moved by 0.09; the same after a resume),
# 3.0e-8 (SalUn with its pseudo-label loss, moved by 0.037; its pseudo labels are drawn for the global batch).
TOLERANCE = 1e-5
# Elements whose saliency score sits on the threshold may flip with those last bits. Measured: SFR-on (gamma = 1)
# 8 of 41,961 elements, the very same 8 under DDP (the FSDP mask equals the DDP mask); SalUn none. A per-shard top-k
# instead of SalUn's global threshold disagrees on 262 (agreement 0.9938), which this bound catches.
MASK_AGREEMENT = 0.999
FSDP_ENV = {"ACCELERATE_USE_CPU": "1", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
            "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_TRANSFORMER_CLS_TO_WRAP": "ResnetBlock2D",
            "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT"}
WORKER = """import sys
sys.path.insert(0, {tests!r})
from test_fsdp import install_hooks
install_hooks(setattr, **{hooks!r})
from diffunlearn.commands.cli import main
main(["unlearn", *sys.argv[1:]])
"""

needs_gloo = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="FSDP on CPU needs torch.distributed with the gloo backend")


class Interrupted(Exception):
    pass


def install_hooks(set_attribute, stop_at=None, mask_file=None):
    """Test hooks, in-process (`monkeypatch.setattr`) or in the torchrun worker (`setattr`): stop a run at step
    `stop_at` as a crash would; save SalUn's mask (gathered from the shards) to `mask_file` after its setup."""
    from diffunlearn.methods.salun import SalUn
    from diffunlearn.methods.sfr_on import SFROn

    if stop_at is not None:
        real_step = SFROn.training_step

        def failing_step(self, step):
            if step == stop_at:
                raise Interrupted()
            return real_step(self, step)

        set_attribute(SFROn, "training_step", failing_step)
    if mask_file is not None:
        real_setup = SalUn.setup

        def saving_setup(self):
            info = real_setup(self)
            self.mask.save(mask_file, main_process=self.context.is_main_process)
            return info

        set_attribute(SalUn, "setup", saving_setup)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fsdp_run(tmp_path, config, output, overrides, check=True, **hooks):
    """`diffunlearn unlearn` in 2 FSDP2 processes on CPU; returns the finished subprocess."""
    worker = tmp_path / f"worker_{len(list(tmp_path.glob('worker_*')))}.py"
    worker.write_text(WORKER.format(tests=str(Path(__file__).parent), hooks=hooks))
    env = {**os.environ, **FSDP_ENV, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "DIFFUNLEARN_CACHE": str(tmp_path / "cache_fsdp")}
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(_free_port()), str(worker), config, "--output", str(output), "--no-eval", *overrides]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
        assert "FSDP2 on CPU (gloo): switched on" in done.stderr, "the run must have been sharded"
    return done


def _max_gap(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _agreement(a: dict, b: dict) -> float:
    same = sum(int((a[k] == b[k]).sum()) for k in a)
    return same / sum(a[k].numel() for k in a)


def _overrides(tiny_ddpm_dir, tiny_classifier_dir):
    return [*tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir, steps=6), "train.cond_drop=0.1",
            "train.optimizer=sgd", "train.lr=0.05"]


def test_kth_largest_is_the_topk_threshold():
    values = torch.rand(1000, generator=torch.Generator().manual_seed(0)).round(decimals=2)  # many ties
    tensors = [values[:300].view(10, 30), values[300:], torch.zeros(5)]
    flat = torch.cat([t.flatten() for t in tensors])
    for k in (1, 7, 500, 999, 1005):
        assert torch.equal(kth_largest(tensors, k), torch.topk(flat, k).values.min())


@pytest.mark.slow
@needs_gloo
def test_fsdp_sfr_on_matches_one_process_and_resumes(tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    overrides = _overrides(tiny_ddpm_dir, tiny_classifier_dir)
    base_digest = folder_digest(tiny_ddpm_dir)
    unlearn_run(MAIN, tmp_path / "one", overrides, evaluate=False, progress=False)
    stopped = _fsdp_run(tmp_path, MAIN, tmp_path / "two", overrides, check=False, stop_at=3)
    assert stopped.returncode != 0 and "Interrupted" in stopped.stderr, stopped.stderr[-3000:]
    checkpoint = tmp_path / ".two.partial" / "checkpoints" / "step_1"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir(), "FSDP checkpoints are accelerate's sharded ones"
    _fsdp_run(tmp_path, MAIN, tmp_path / "two", overrides)  # resumes from step_1
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["resumed"] and report["method_setup"]["first_step"] == 2
    assert report["method_setup"]["mask_cache_hit"], "the resumed run reads the mask (full) and shards it"

    one, two = load_file(tmp_path / "one" / WEIGHTS), load_file(tmp_path / "two" / WEIGHTS)
    base = load_file(tiny_ddpm_dir / "unet" / "diffusion_pytorch_model.safetensors")
    moved, gap = _max_gap(one, base), _max_gap(one, two)
    assert moved > 100 * TOLERANCE, "the run must change the weights for the comparison to mean anything"
    assert gap < TOLERANCE, f"FSDP weights differ from 1-process by {gap} (moved {moved})"
    mask_one = load_file(next((Path(os.environ["DIFFUNLEARN_CACHE"]) / "masks").glob("*.safetensors")))
    mask_two = load_file(next((tmp_path / "cache_fsdp" / "masks").glob("*.safetensors")))
    assert _agreement(mask_one, mask_two) > MASK_AGREEMENT
    assert folder_digest(tiny_ddpm_dir) == base_digest, "an FSDP run (and its resume) changed the base folder"


@pytest.mark.slow
@needs_gloo
def test_fsdp_salun_has_the_global_threshold_and_masked_elements_do_not_move(tmp_path, monkeypatch, tiny_ddpm_dir,
                                                                             tiny_classifier_dir):
    raw = yaml.safe_load(Path(MAIN).read_text())
    raw["method"] = {"name": "salun", "keep_fraction": 0.3, "mask_batches": 2}
    config = tmp_path / "salun.yaml"
    config.write_text(yaml.safe_dump(raw))
    overrides = [o for o in _overrides(tiny_ddpm_dir, tiny_classifier_dir) if not o.startswith("method.")]
    install_hooks(monkeypatch.setattr, mask_file=str(tmp_path / "mask_one.safetensors"))
    unlearn_run(config, tmp_path / "one", overrides, evaluate=False, progress=False)
    _fsdp_run(tmp_path, str(config), tmp_path / "two", overrides, mask_file=str(tmp_path / "mask_two.safetensors"))

    mask_one, mask_two = load_file(tmp_path / "mask_one.safetensors"), load_file(tmp_path / "mask_two.safetensors")
    assert _agreement(mask_one, mask_two) > MASK_AGREEMENT
    one, two = load_file(tmp_path / "one" / WEIGHTS), load_file(tmp_path / "two" / WEIGHTS)
    base = load_file(tiny_ddpm_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert _max_gap(one, two) < TOLERANCE
    for name, keep in mask_two.items():
        frozen = ~keep.bool()
        assert torch.equal(two[name][frozen], base[name][frozen]), f"masked elements of {name} moved under FSDP"
    assert _max_gap(two, base) > 100 * TOLERANCE


def test_a_method_not_checked_under_fsdp_is_refused_before_writing(capsys, monkeypatch, tmp_path, tiny_ddpm_dir,
                                                                   tiny_classifier_dir):
    from diffunlearn.commands.cli import main

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    config = tmp_path / "sa.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(Path(MAIN).read_text()), "method": {"name": "sa"}}))
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["unlearn", str(config), "--output", str(out),
              *(o for o in tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir) if not o.startswith("method."))])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "method 'sa' is not supported under FSDP; use one of: " in err and "sfr_on" in err and "esd" not in err
    assert not out.exists() and not list(tmp_path.glob(".run.partial"))
