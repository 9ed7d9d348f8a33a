"""Tiny real models built from configs (as diffusers' own tests do); everything runs offline on the CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402

from diffunlearn.models.ddpm import ClassConditionalDDPM, ClassConditionalDDPMPipeline, tiny_unet_config
from diffunlearn.models.digits_classifier import DigitsClassifier


# the longest tests of the default suite (`pytest --durations`), started first: under `make test`'s workers none of
# them is left to run alone at the end
LONGEST = ("test_faults.py::test_sigkill", "test_gpu_bench.py::test_tiny_run", "test_distributed.py::test_two_cpu",
           "test_metrics.py::test_an_evaluation_with_inception", "test_families.py::test_cli_end_to_end",
           "test_benchmark.py::test_benchmark_end_to_end")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: not any(name in item.nodeid for name in LONGEST))  # stable: the rest keep their order


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


# small budgets for every class-conditioned attack: seconds on the CPU, and a relearning curve of three points per k
TINY_ATTACK_SETTINGS = ["attack.completion.samples=4", "attack.completion.strengths=[0.5]", "attack.relearning.k=[2,4]",
                        "attack.relearning.steps=[0,1,2]", "attack.relearning.samples=4",
                        "attack.relearning.num_inference_steps=3", "attack.inversion.iterations=2",
                        "attack.inversion.k=4", "attack.inversion.samples=4"]


@pytest.fixture(scope="session")
def attacked_suite(tmp_path_factory, tiny_ddpm_dir):
    """A finished attack suite (its output folder: robustness.json, gallery/) on the embedded digits config: every
    class-conditioned attack on `TINY_ATTACK_SETTINGS` against the tiny DDPM of random weights as the "unlearned"
    model (ASR 0 but for completion), the embedded base beside it (ASR 1) and an RT (another tiny DDPM), judged by
    the embedded classifier; about 3 s."""
    from accelerate.state import AcceleratorState

    from diffunlearn.robustness.suite import run_suite

    root = tmp_path_factory.mktemp("attacked")
    tiny_ddpm(seed=1).save_pretrained(root / "rt")
    fast = [o for o in tiny_overrides(tiny_ddpm_dir, "-") if not o.startswith(("model.path=", "eval.classifier="))]
    with pytest.MonkeyPatch.context() as patch:  # session-scoped: the per-test cache isolation is not there yet
        patch.setenv("DIFFUNLEARN_CACHE", str(root / "cache"))
        torch.set_num_threads(1)
        run_suite("configs/digits/ddpm_sfron.yaml", tiny_ddpm_dir, root / "out",
                  overrides=fast + TINY_ATTACK_SETTINGS, rt_path=root / "rt", progress=None)
    AcceleratorState._reset_state(True)
    return root / "out"
