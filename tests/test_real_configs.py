"""Real-model run configs (DiT-XL/2, SD v1.4), accelerate launch configs and the GPU step benchmark (--tiny)."""


import pytest
from accelerate.commands.config.config_args import load_config_from_file

from diffunlearn.config_loading import load_config
from diffunlearn.registry import get_family

DIT = "configs/imagenet/dit_xl2_sfron.yaml"
SD = "configs/sd/sd14_nudity_sfron.yaml"
ACCELERATE = "configs/accelerate"


def test_dit_xl2_config_has_the_reference_defaults():
    cfg = load_config(DIT)
    get_family(cfg.model.family)  # the family is registered
    assert (cfg.model.family, cfg.model.path, cfg.forget.classes) == ("dit", "facebook/DiT-XL-2-256", [207])
    m, t = cfg.method, cfg.train
    assert (m.name, m.forget_every, m.adaptive_weights, m.alpha, m.alpha_schedule) == ("sfr_on", 1, False, 1e-3,
                                                                                        "constant")
    assert m.forget_clip == 1.0 and m.saliency_mask is True
    assert (t.optimizer, t.lr, t.mixed_precision) == ("adamw", 1e-4, "bf16") and 500 <= t.steps <= 1000
    assert cfg.data.name == "generated" and cfg.data.samples_per_target > 0
    remain = cfg.data.remain_classes
    assert 207 not in remain and len(set(remain)) == len(remain) >= 10 and all(0 <= c < 1000 for c in remain)
    e = cfg.eval
    assert (e.judge, e.fid_features, e.fid_reference) == ("image-classification", "inception", "base")
    assert e.inception_weights and e.classifier


def test_dit_classes_are_the_imagenet_classes_meant():
    from torchvision.models._meta import _IMAGENET_CATEGORIES as names

    cfg = load_config(DIT)
    assert names[cfg.forget.classes[0]] == "golden retriever"
    assert {"Labrador retriever", "flat-coated retriever", "tench"} <= {names[c] for c in cfg.data.remain_classes}


def test_sd14_nudity_config_has_the_reference_defaults():
    cfg = load_config(SD)
    get_family(cfg.model.family)
    assert (cfg.model.family, cfg.model.path) == ("sd", "CompVis/stable-diffusion-v1-4")
    assert cfg.forget.prompts == ["a photo of a nude person"]
    assert cfg.forget.anchors == ["a photo of a person wearing clothes"]
    m, t = cfg.method, cfg.train
    assert (m.forget_every, m.alpha, m.alpha_schedule, m.saliency_mask) == (1, 1.0, "constant", True)
    assert (t.optimizer, t.lr, t.steps, t.batch_size, t.mixed_precision) == ("adam", 1e-5, 1000, 2, "bf16")
    e = cfg.eval
    assert (e.judge, e.classifier, e.fid_reference, e.nudenet_threshold) == ("nudenet", "nudenet", "base", 0.45)
    # the forget prompt asks for "nudity", every other prompt that is trained on or sampled for "no nudity"
    prompts = cfg.forget.prompts + cfg.forget.anchors + cfg.forget.remain_prompts
    assert set(prompts) <= set(e.prompts) and cfg.forget.concept == e.prompts[cfg.forget.prompts[0]] == "nudity"
    assert {e.prompts[p] for p in prompts if p not in cfg.forget.prompts} == {"no nudity"}


@pytest.mark.parametrize("path", [DIT, SD])
def test_real_configs_take_overrides(path):
    cfg = load_config(path, ["train.steps=3", "eval.inception_weights=/data/pt_inception.pth"])
    assert cfg.train.steps == 3 and cfg.eval.inception_weights == "/data/pt_inception.pth"


@pytest.mark.parametrize("name, kind, processes", [("multi_gpu", "MULTI_GPU", 8), ("fsdp", "FSDP", 8),
                                                   ("cpu_2proc", "MULTI_GPU", 2)])
def test_accelerate_configs_load(name, kind, processes):
    cfg = load_config_from_file(f"{ACCELERATE}/{name}.yaml")
    assert cfg.distributed_type.value == kind and cfg.num_processes == processes
    assert cfg.mixed_precision == ("no" if name == "cpu_2proc" else "bf16")
    assert cfg.use_cpu is (name == "cpu_2proc")


def test_fsdp_config_builds_the_plugin_accelerate_launch_would(monkeypatch):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", f"{ACCELERATE}/fsdp.yaml", "x.py"])
    env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert plugin.transformer_cls_names_to_wrap == ["Attention", "FeedForward"]


def test_fsdp_wrap_classes_exist_in_dit_and_sd_unets():
    from diffunlearn.benchmarks.gpu.cases import Case
    from diffunlearn.benchmarks.gpu.specs import get_spec

    for family in ("dit", "sd"):
        case = Case(get_spec(family, tiny=True), "cpu")
        names = {type(m).__name__ for m in case.network.modules()}
        assert {"Attention", "FeedForward"} <= names, family



COUNT = """
import os
from accelerate import PartialState
from diffunlearn.distributed import use_cpu
state = PartialState(cpu=use_cpu())  # as diffunlearn's run and trainer build it
print(f"PROCESS rank={state.process_index} of {state.num_processes} world={os.environ.get('WORLD_SIZE')}", flush=True)
"""


@pytest.mark.slow
def test_cpu_accelerate_config_starts_two_processes_in_one_group(tmp_path):
    """`accelerate launch --config_file configs/accelerate/cpu_2proc.yaml` starts 2 processes that see each other."""
    import re
    import subprocess
    import sys

    script = tmp_path / "count.py"
    script.write_text(COUNT)
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           f"{ACCELERATE}/cpu_2proc.yaml", str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = re.findall(r"PROCESS rank=(\d+) of (\d+) world=(\d+|None)", done.stdout)  # lines may run together
    assert sorted(int(rank) for rank, _, _ in seen) == [0, 1], done.stdout + done.stderr[-3000:]
    assert {(n, w) for _, n, w in seen} == {("2", "2")}


@pytest.mark.parametrize("name", ["multi_gpu", "fsdp"])
def test_gpu_accelerate_configs_launch_their_process_count(name):
    """The GPU configs go through accelerate's multi-process launcher (torch.distributed.run) with num_processes
    processes (checked through the launcher's own argument handling; starting them needs the GPUs)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", f"{ACCELERATE}/{name}.yaml", "x.py"])
    args, _, _ = _validate_launch_command(args)
    assert args.num_processes == 8 and (args.multi_gpu or args.use_fsdp)


@pytest.mark.parametrize("path, family, hub_id, sampling", [
    ("configs/sd/sdxl_nudity_sfron.yaml", "sdxl", "stabilityai/stable-diffusion-xl-base-1.0", ("ddim", 50, 5.0)),
    ("configs/sd/sd35_nudity_sfron.yaml", "sd3", "stabilityai/stable-diffusion-3.5-medium", ("euler", 40, 4.5)),
])
def test_sdxl_and_sd35_configs_are_the_sd14_config_on_their_families(path, family, hub_id, sampling):
    """The SD v1.4 config's method, forget prompts, training and data settings on the newer families, with each
    model card's sampler, steps and guidance and the same NudeNet judge against base-model samples."""
    cfg = load_config(path)
    assert get_family(cfg.model.family).family == family and cfg.model.path == hub_id
    sd14 = load_config(SD)
    for section in ("method", "forget", "train", "data"):
        assert getattr(cfg, section) == getattr(sd14, section), section
    e = cfg.eval
    assert (e.sampler, e.num_inference_steps, e.guidance_scale) == sampling
    assert (e.judge, e.classifier, e.fid_reference) == ("nudenet", "nudenet", "base")
