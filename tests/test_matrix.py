"""The generic tester: every (family, method) case through the same tests, in the spirit of peft's test matrix.

Rows come from two tables: `FAMILY_ROWS` (a tiny model built from configs, its digits run config) and the method
registry. A registered method gets every family row whose conditioning kind it forgets (class or text); a new family
gets every method from one `FAMILY_ROWS` entry. What each test pins:

- a step moves trainable weights only, and every masked update keeps its masked-out elements;
- a run interrupted after a checkpoint resumes there (its first trained step is the checkpoint's next one, not 0)
  and ends bit-identical to the run that was never interrupted; the base model folder is unchanged throughout;
- `unlearn` with evaluation and `evaluate` leave the base folder unchanged (LoRA included);
- a saved folder loads back to the same weights and samples, and the stock diffusers pipeline gives our samples.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from accelerate.state import AcceleratorState
from conftest import tiny_ddpm
from diffusers import (DDIMScheduler, DiTPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline,
                       StableDiffusionXLPipeline)
from helpers import folder_digest
from safetensors.torch import load_file
from test_dit import tiny_dit
from test_sd import tiny_sd
from test_sd3 import tiny_sd3
from test_sdxl import tiny_sdxl

from diffunlearn.runs.evaluate import evaluate_model_command
from diffunlearn.runs.unlearn import unlearn_run
from diffunlearn.config_loading import build_config, load_config, read_yaml
from diffunlearn.data.sets import build_sets
from diffunlearn.models.loading import load_model
from diffunlearn.registry import METHODS, get_family, get_method
from diffunlearn.training.trainer import Trainer


@dataclass
class FamilyRow:
    family: str
    build: Callable
    config: str
    overrides: tuple = ()


FAMILY_ROWS = {
    "ddpm": FamilyRow("ddpm", tiny_ddpm, "configs/digits/ddpm_sfron.yaml"),
    "dit": FamilyRow("dit", tiny_dit, "configs/digits/dit_sfron.yaml"),
    "sd": FamilyRow("sd", tiny_sd, "configs/digits/sd_sfron.yaml"),
    "sd-lora": FamilyRow("sd", tiny_sd, "configs/digits/sd_sfron.yaml", ("model.subset=lora",)),
    "sd3": FamilyRow("sd3", tiny_sd3, "configs/digits/sd3_sfron.yaml"),
    "sd3-lora": FamilyRow("sd3", tiny_sd3, "configs/digits/sd3_sfron.yaml", ("model.subset=lora",)),
    "sdxl": FamilyRow("sdxl", tiny_sdxl, "configs/digits/sdxl_sfron.yaml"),
}
SMALL = ("train.batch_size=8", "data.samples_per_target=8", "train.log_every=1", "stop.check_every=0",
         "eval.num_inference_steps=2", "eval.batch_size=64", "eval.forget_samples=4",
         "eval.retained_samples_per_class=2", "eval.gallery_per_class=2")
METHOD_SMALL = {"sfr_on": {"mask_batches": 2}, "salun": {"mask_batches": 2},
                "sa": {"replay_samples": 9, "replay_steps": 2, "fisher_samples": 3, "fisher_timesteps": 4}}


def _cases() -> list:
    METHODS.load_all()
    cases = []
    for row_name, row in FAMILY_ROWS.items():
        text = get_family(row.family).conditioning == "text"
        subset = next((o.split("=", 1)[1] for o in row.overrides if o.startswith("model.subset=")),
                      read_yaml(row.config)["model"].get("subset", "all"))
        cases += [(row_name, name) for name, method in sorted(METHODS.items())
                  if (method.supports_concepts if text else method.supports_classes)
                  and (method.supported_subsets is None or subset in method.supported_subsets)
                  and (method.supported_families is None or row.family in method.supported_families)]
    return cases


CASES = _cases()


def _raw_config(row: FamilyRow, method: str) -> dict:
    """The family's digits config with `method` (its own defaults, shrunk; SFR-on keeps the config's section)."""
    raw = read_yaml(row.config)
    small = METHOD_SMALL.get(method, {})
    raw["method"] = {**raw["method"], **small} if method == raw["method"]["name"] else {"name": method, **small}
    return raw


@pytest.fixture(scope="module")
def base_folders(tmp_path_factory):
    """One saved tiny model per family, shared by the module's tests (they must never change it)."""
    root = tmp_path_factory.mktemp("bases")
    folders = {}
    for name in {row.family for row in FAMILY_ROWS.values()}:
        build = next(row.build for row in FAMILY_ROWS.values() if row.family == name)
        build().save_pretrained(root / name)
        folders[name] = root / name
    return folders


def _all_parameters(model) -> dict:
    """Every parameter of every module of the pipeline (network, VAE, text encoder), by qualified name."""
    return {f"{component}.{name}": p.detach().clone()
            for component, module in model.pipeline.components.items() if isinstance(module, torch.nn.Module)
            for name, p in module.named_parameters()}


def _reset_accelerate() -> None:
    AcceleratorState._reset_state(True)


# --- a step moves what it should -------------------------------------------------------------------------------
@pytest.mark.parametrize("row_name, method", CASES)
def test_a_step_moves_trainable_weights_only_and_masked_updates_keep_masked_elements(row_name, method, tmp_path,
                                                                                       base_folders):
    row = FAMILY_ROWS[row_name]
    cfg = build_config(_raw_config(row, method), [f"model.path={base_folders[row.family]}", *SMALL, *row.overrides])
    model, path = load_model(cfg)
    forget_set, remain_set = build_sets(cfg, model, path)
    trainer = Trainer(cfg, model, get_method(method), forget_set, remain_set, tmp_path, progress=False)
    trainable = {name for name, _ in trainer.params}
    network_name = next(c for c, m in model.pipeline.components.items() if m is model.network)
    before = _all_parameters(model)
    masked_updates = []
    update = trainer.update

    def checked_update(loss, clip=None, mask=None):  # every update with a mask: masked-out elements stay
        params = {name: p.detach().clone() for name, p in trainer.params} if mask is not None else None
        update(loss, clip=clip, mask=mask)
        if mask is not None:
            for name, p in trainer.params:
                frozen = ~mask.tensors[name]
                assert torch.equal(p.detach()[frozen], params[name][frozen]), f"masked elements of {name} moved"
            masked_updates.append(mask.density())

    trainer.update = checked_update
    trainer.method.setup()
    logs = {}
    for step in range(4):  # a slow (forget) step after fast (remain) ones, for fast-slow methods with K <= 3
        logs.update(trainer.method.training_step(step))
    assert logs and all(bool(torch.isfinite(torch.as_tensor(v))) for v in logs.values()), logs
    after = _all_parameters(model)
    moved = {n for n in after if not torch.equal(after[n], before[n])}
    qualified = {f"{network_name}.{n}" for n in trainable}
    assert moved, f"{row_name}/{method}: four steps moved no weight"
    assert moved <= qualified, f"{row_name}/{method}: frozen weights moved: {sorted(moved - qualified)[:5]}"
    if getattr(trainer.method, "mask", None) is not None:
        assert masked_updates, f"{row_name}/{method}: the method has a mask but no update used it"


# --- resume and the base folder --------------------------------------------------------------------------------
class Interrupted(Exception):
    """Stands in for a kill right after a checkpoint is complete (the SIGKILL test is in test_faults.py)."""


def _run_args(row, method, base_folders, classifier, tmp_path):
    config = tmp_path / f"{method}.yaml"
    config.write_text(yaml.safe_dump(_raw_config(row, method)))
    overrides = [f"model.path={base_folders[row.family]}", f"eval.classifier={classifier}", *SMALL, *row.overrides,
                 "train.steps=4", "train.checkpoint_every=2"]
    return str(config), overrides


def _weights(folder: Path) -> dict:
    return {f"{p.relative_to(folder)}:{k}": v for p in sorted(folder.rglob("*.safetensors"))
            for k, v in load_file(p).items()}


@pytest.mark.parametrize("row_name, method", CASES)
def test_an_interrupted_run_resumes_at_its_checkpoint_and_ends_bit_identical(row_name, method, tmp_path,
                                                                           base_folders, tiny_classifier_dir,
                                                                           monkeypatch):
    row = FAMILY_ROWS[row_name]
    base = base_folders[row.family]
    digest = folder_digest(base)
    config, overrides = _run_args(row, method, base_folders, tiny_classifier_dir, tmp_path)
    straight = unlearn_run(config, tmp_path / "straight", overrides, evaluate=False, progress=False)
    assert straight["method_setup"]["first_step"] == 0
    _reset_accelerate()

    save = Trainer.save_checkpoint

    def save_then_die(self, step, callback=None):
        save(self, step, callback)
        raise Interrupted(step)

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        unlearn_run(config, tmp_path / "killed", overrides, evaluate=False, progress=False)
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    _reset_accelerate()
    assert not (tmp_path / "killed").exists() and (tmp_path / ".killed.partial" / "checkpoints" / "step_1").is_dir()

    resumed = unlearn_run(config, tmp_path / "killed", overrides, evaluate=False, progress=False)
    assert resumed["resumed"] and resumed["method_setup"]["first_step"] == 2, resumed["method_setup"]
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert folder_digest(base) == digest, f"{row_name}/{method}: the base model folder changed"


@pytest.mark.parametrize("row_name", list(FAMILY_ROWS))
def test_unlearn_with_evaluation_and_evaluate_leave_the_base_folder_unchanged(row_name, tmp_path, base_folders,
                                                                              tiny_classifier_dir):
    row = FAMILY_ROWS[row_name]
    base = base_folders[row.family]
    digest = folder_digest(base)
    method = read_yaml(row.config)["method"]["name"]
    config, overrides = _run_args(row, method, base_folders, tiny_classifier_dir, tmp_path)
    report = unlearn_run(config, tmp_path / "run", overrides, progress=False)
    assert 0.0 <= report["unlearned"]["forget_accuracy"] <= 1.0
    _reset_accelerate()
    result = evaluate_model_command(config, str(tmp_path / "run"), tmp_path / "eval.json", overrides)
    assert result["metrics"]["forget_accuracy"] == report["unlearned"]["forget_accuracy"]
    assert folder_digest(base) == digest, f"{row_name}: the base model folder changed"


# --- save / load and the stock pipelines ------------------------------------------------------------------------
def _stock_samples(family: str, folder: Path, model, generator_seed: int = 0):
    """(ours, stock) images (B, H, W, C) in [0, 1] for one condition, 3 steps (DDIM; SD3: Euler), guidance 2."""
    def gen():
        return torch.Generator().manual_seed(generator_seed)

    if family == "dit":
        ours = model.sample(torch.tensor([3]), gen(), 3, 2.0, "ddim")
        pipe = DiTPipeline.from_pretrained(folder)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        stock = pipe(class_labels=[3], guidance_scale=2.0, num_inference_steps=3, generator=gen(),
                     output_type="np").images
    elif family == "sd":
        prompt = "a handwritten digit three"
        ours = model.sample(model.tokenize([prompt]), gen(), 3, 2.0, "ddim")
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        stock = pipe(prompt, guidance_scale=2.0, num_inference_steps=3, generator=gen(), output_type="np").images
    elif family == "sdxl":
        prompt = "a handwritten digit three"
        ours = model.sample(model.tokenize([prompt]), gen(), 3, 2.0, "ddim")
        pipe = StableDiffusionXLPipeline.from_pretrained(folder)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        stock = pipe(prompt, guidance_scale=2.0, num_inference_steps=3, generator=gen(), output_type="np",
                     height=8, width=8).images
    elif family == "sd3":  # flow matching: the family's Euler sampler; the folder has no T5 (diffusers' way)
        prompt = "a handwritten digit three"
        ours = model.sample(model.tokenize([prompt]), gen(), 3, 2.0, "euler")
        pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
        stock = pipe(prompt, guidance_scale=2.0, num_inference_steps=3, generator=gen(), output_type="np",
                     height=8, width=8).images
    else:  # diffusers has no class-conditional DDPM pipeline: ours, loaded from the folder by its class
        ours = model.sample(torch.tensor([3]), gen(), 3, 2.0, "ddim")
        pipe = model.pipeline_class.from_pretrained(folder)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        stock = pipe(class_labels=[3], guidance_scale=2.0, num_inference_steps=3, generator=gen(),
                     output_type="np").images
    return ours.permute(0, 2, 3, 1).numpy(), np.asarray(stock)


@pytest.mark.parametrize("family", sorted({row.family for row in FAMILY_ROWS.values()}))
def test_a_saved_folder_round_trips_and_the_stock_pipeline_gives_our_samples(family, tmp_path):
    row = next(r for r in FAMILY_ROWS.values() if r.family == family)
    model = row.build()
    model.save_pretrained(tmp_path / "saved")
    loaded = get_family(family).from_pretrained(str(tmp_path / "saved"))
    original, reloaded = _all_parameters(model), _all_parameters(loaded)
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[k], reloaded[k]) for k in original)
    ours, stock = _stock_samples(family, tmp_path / "saved", loaded)
    again, _ = _stock_samples(family, tmp_path / "saved", model)
    assert np.array_equal(ours, again), "the reloaded model samples differently from the one saved"
    assert ours.shape == stock.shape and np.abs(ours - stock).max() < 1e-5, np.abs(ours - stock).max()


def test_lora_adapters_come_from_the_run_seed_not_the_global_generator(tmp_path, base_folders):
    """Two loads of a LoRA run, with the global generator in different states, give the same adapters (they used
    to be drawn from whatever state imports left it in)."""
    cfg = load_config(FAMILY_ROWS["sd-lora"].config, [f"model.path={base_folders['sd']}", "model.subset=lora"])
    adapters = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        model, _ = load_model(cfg)
        adapters.append({n: p.detach().clone() for n, p in model.trainable_parameters()})
    assert adapters[0] and adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    reseeded, _ = load_model(load_config(FAMILY_ROWS["sd-lora"].config,
                                         [f"model.path={base_folders['sd']}", "model.subset=lora", "seed=5"]))
    assert any(not torch.equal(p.detach(), adapters[0][n]) for n, p in reseeded.trainable_parameters())


def test_the_family_contract_is_checked_where_a_family_registers():
    """A family class without a conditioning kind, or without what its kind needs, is refused by
    `register_family` (one place), naming what is missing."""
    from diffunlearn.models.base import DiffusionModel
    from diffunlearn.registry import FAMILIES, register_family

    ddpm = get_family("ddpm")

    class NoKind(ddpm):
        family = "no-kind"
        conditioning = "audio"

    class TextWithoutTokenizer(ddpm):
        family = "text-without-tokenizer"
        conditioning = "text"

    class Bare(DiffusionModel):
        family, pipeline_class, conditioning = "bare", object, "class"
        presets = {"embedded": "x.yaml", "checkpoint": "x.yaml"}

    for cls, message in [(NoKind, "conditioning 'audio' is not one of class, text"),
                         (TextWithoutTokenizer, "does not implement tokenize, anchor_condition"),
                         (Bare, "does not implement network, predict, condition, null_condition, drop_condition, "
                                "sample, num_classes")]:
        with pytest.raises(TypeError, match=message):
            register_family(cls)
        assert cls.family not in FAMILIES
