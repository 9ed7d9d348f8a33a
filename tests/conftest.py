"""Tiny real models built from configs (as diffusers' own tests do); everything runs offline on the CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402

from diffunlearn.models.ddpm import ClassConditionalDDPM, ClassConditionalDDPMPipeline, tiny_unet_config
from diffunlearn.models.digits_classifier import DigitsClassifier


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DIFFUNLEARN_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and on a shared machine two can be 15x slower
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # each test builds its own Accelerator (precision, processes)


def tiny_ddpm(seed: int = 0, prediction_type: str = "epsilon") -> ClassConditionalDDPM:
    torch.manual_seed(seed)
    unet = UNet2DModel(**tiny_unet_config(channels=(8, 16), norm_num_groups=4))
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                              prediction_type=prediction_type)
    return ClassConditionalDDPM(ClassConditionalDDPMPipeline(unet=unet, scheduler=scheduler))


@pytest.fixture(scope="session")
def tiny_ddpm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_ddpm")
    tiny_ddpm().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_classifier")
    DigitsClassifier(channels=(4, 8, 8)).eval().save_pretrained(path)
    return path


def tiny_overrides(model_dir, classifier_dir, steps: int = 4) -> list:
    """Overrides that make the embedded-digits config run in seconds on tiny models."""
    return [f"model.path={model_dir}", f"eval.classifier={classifier_dir}", f"train.steps={steps}",
            "train.batch_size=16", "train.checkpoint_every=2", "train.log_every=1", "method.mask_batches=2",
            "eval.forget_samples=8", "eval.retained_samples_per_class=4", "eval.num_inference_steps=3",
            "eval.gallery_per_class=2", "eval.batch_size=64",
            "stop.check_every=0"]  # in-loop checks have their own tests (test_monitor.py)
