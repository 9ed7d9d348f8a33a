"""SFR-on specifics on all three families (every method x family case is in test_matrix.py): DDPM and DiT forget a
class, SD forgets a prompt.

Each family's tiny model (built from configs, offline) goes through the real Trainer and SFR-on: the Fisher-ratio
mask freezes some elements, a forget step moves only salient ones (also under Adam momentum), the losses are finite
and a few iterations change the weights. End to end, the CLI's outputs load with the stock diffusers pipelines.
"""

import json
import re
import runpy
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_ddpm
from diffusers import DiTPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from helpers import snapshot
from test_dit import tiny_dit
from test_sd import tiny_sd
from test_sd3 import tiny_sd3
from test_sdxl import tiny_sdxl

from diffunlearn.commands.cli import main
from diffunlearn.config_loading import build_config, read_yaml
from diffunlearn.data.sets import build_sets
from diffunlearn.methods.rl import relabel_prompts
from diffunlearn.registry import get_method
from diffunlearn.training.trainer import Trainer

CONFIGS = {"ddpm": "configs/digits/ddpm_sfron.yaml", "dit": "configs/digits/dit_sfron.yaml",
           "sd": "configs/digits/sd_sfron.yaml", "sd3": "configs/digits/sd3_sfron.yaml",
           "sdxl": "configs/digits/sdxl_sfron.yaml"}
BUILDERS = {"ddpm": tiny_ddpm, "dit": tiny_dit, "sd": tiny_sd, "sd3": tiny_sd3, "sdxl": tiny_sdxl}
SMALL = ["train.batch_size=8", "method.mask_batches=2", "data.samples_per_target=8", "eval.num_inference_steps=2",
         "eval.batch_size=64"]


def family_trainer(family, tmp_path, overrides=(), method=None):
    """A Trainer for `family`'s tiny model with the family's digits config (generated data for SD); `method`
    replaces the config's SFR-on section by that method's defaults."""
    model = BUILDERS[family]()
    folder = tmp_path / "base"
    model.save_pretrained(folder)
    raw = read_yaml(CONFIGS[family])
    small = SMALL
    if method:
        raw["method"], small = {"name": method}, [o for o in SMALL if not o.startswith("method.")]
    cfg = build_config(raw, [f"model.path={folder}", *small, *overrides])
    forget_set, remain_set = build_sets(cfg, model, str(folder))
    (tmp_path / "work").mkdir()
    return Trainer(cfg, model, get_method(cfg.method.name), forget_set, remain_set, tmp_path / "work",
                   progress=False)


@pytest.mark.parametrize("family", ["ddpm", "dit", "sd", "sd3", "sdxl"])
def test_sfr_on_forget_step_moves_only_salient_elements(family, tmp_path):
    trainer = family_trainer(family, tmp_path, ["method.remain=false", "method.forget_every=1",
                                                "train.optimizer=adam", "method.gamma=1.0"])
    trainer.method.setup()
    mask = trainer.method.mask
    assert 0.0 < mask.density() < 1.0, f"{family}: the mask should keep some elements and freeze others"
    trainer.update(trainer.losses(trainer.remain_batch(0), 0, stream=2).mean())  # Adam momentum everywhere
    before = snapshot(trainer)
    logs = trainer.method.training_step(1)
    assert torch.isfinite(logs["forget_loss"])
    moved = 0
    for name, p in trainer.params:
        frozen = ~mask.tensors[name]
        assert torch.equal(p.detach()[frozen], before[name][frozen]), f"{family}: masked elements of {name} moved"
        moved += int((p.detach()[~frozen] != before[name][~frozen]).sum())
    assert moved > 0, f"{family}: the forget step should move salient elements"


@pytest.mark.parametrize("family", ["ddpm", "dit", "sd", "sd3", "sdxl"])
def test_sfr_on_iterations_change_weights_with_finite_losses(family, tmp_path):
    trainer = family_trainer(family, tmp_path, ["train.steps=3", "train.log_every=1", "train.checkpoint_every=10"])
    before = snapshot(trainer)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "work" / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["remain_loss"] > 0 for r in rows) and "forget_loss" in rows[0]
    assert any(not torch.equal(p.detach(), before[n]) for n, p in trainer.params)


@pytest.mark.parametrize("family", ["sd", "sd3", "sdxl"])
def test_concept_forget_loss_pulls_the_forget_prompt_onto_its_anchor(family, tmp_path):
    """The concept forget step is a descent on ||eps(c_forget) - sg eps(c_anchor)||^2 (SD3: the velocities): it
    shrinks that gap."""
    trainer = family_trainer(family, tmp_path, ["method.remain=false", "method.saliency_mask=false",
                                              "train.optimizer=sgd", "train.lr=0.01", "method.forget_clip=null"])
    batch = trainer.forget_batch(0)
    trainer.method.setup()
    gap_before = trainer.anchored_losses(batch, 0, stream=1).mean().item()
    for step in range(5):
        trainer.method.training_step(0)  # same batch, same x_t: a plain descent on that loss
    gap_after = trainer.anchored_losses(batch, 0, stream=1).mean().item()
    assert gap_after < 0.9 * gap_before, (gap_before, gap_after)


@pytest.mark.parametrize("family", ["dit", "sd", "sd3", "sdxl"])
def test_cli_end_to_end_outputs_load_with_stock_pipelines(family, tmp_path, tiny_classifier_dir):
    folder = tmp_path / "base"
    BUILDERS[family]().save_pretrained(folder)
    out = tmp_path / "run"
    main(["unlearn", CONFIGS[family], "--output", str(out), f"model.path={folder}",
          f"eval.classifier={tiny_classifier_dir}", "train.steps=2", "train.checkpoint_every=1", *SMALL,
          "eval.forget_samples=4", "eval.retained_samples_per_class=2", "eval.gallery_per_class=2"])
    report = json.loads((out / "report.json").read_text())
    for side in ("base", "unlearned"):
        assert 0.0 <= report[side]["forget_accuracy"] <= 1.0 and report[side]["fid_retained"] >= 0
    assert (out / "gallery" / "grid.png").is_file() and (out / "README.md").is_file()
    if family == "dit":
        pipe = DiTPipeline.from_pretrained(out)
        images = pipe(class_labels=[3], num_inference_steps=2, output_type="np").images
    else:
        assert report["forget_prompts"] == ["a handwritten digit seven"]
        assert report["protocol"]["forget_targets"] == ["a handwritten digit seven"]
        pipe = {"sd": lambda: StableDiffusionPipeline.from_pretrained(out, safety_checker=None,
                                                                       requires_safety_checker=False),
                "sdxl": lambda: StableDiffusionXLPipeline.from_pretrained(out),
                "sd3": lambda: StableDiffusion3Pipeline.from_pretrained(out, text_encoder_3=None,
                                                                        tokenizer_3=None)}[family]()
        images = pipe("a handwritten digit three", num_inference_steps=2, output_type="np").images
    assert images.shape[0] == 1 and images.min() >= 0 and images.max() <= 1


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_sd")
    tiny_sd().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("extra, message", [
    (["forget.prompts=[]"], "forget.classes and forget.prompts are both empty"),
    (["forget.anchors=[a handwritten digit seven]"],
     "forget and remain prompts are identical: ['a handwritten digit seven']"),
    (["forget.prompts=[a handwritten digit 7]"], "a handwritten digit 7"),  # the tokenizer cannot encode "7"
    (["forget.prompts=[a handwritten digit banana]"], "cannot tell which judge label the forget prompt"),
    (["eval.guidance_scale=0.5"], "eval.guidance_scale 0.5 is not supported by the sd family"),
    (["model.subset=everything"], "unknown model.subset for the sd family 'everything'; valid: all, cross_attention, lora"),
    (["forget.anchors=[a,b,c]"], "forget.anchors needs 1 or 1 prompts"),
    (["eval.sampler=euler"], "eval.sampler 'euler' is not supported by the sd family; valid: ddim, ddpm"),
    (["data.generation_guidance=0.5"], "data.generation_guidance 0.5 is not supported by the sd family"),
])
def test_sd_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, tmp_path, tiny_sd_dir, extra, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["unlearn", CONFIGS["sd"], "--output", str(out), f"model.path={tiny_sd_dir}", *SMALL, *extra])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() and not list(tmp_path.glob(".run.partial"))


def test_prompt_target_on_a_class_family_is_refused(capsys, tmp_path, tiny_ddpm_dir):
    with pytest.raises(SystemExit) as info:
        main(["unlearn", CONFIGS["ddpm"], "--output", str(tmp_path / "run"), f"model.path={tiny_ddpm_dir}",
              "forget.classes=[]", "forget.prompts=[a handwritten digit seven]", "forget.anchors=[a handwritten digit]"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "model family 'ddpm' forgets classes (forget.classes), not prompts" in err, err


def test_class_only_method_on_a_prompt_target_is_refused(capsys, tmp_path, tiny_sd_dir):
    raw = read_yaml(CONFIGS["sd"])
    raw["method"] = {"name": "sa"}
    config = tmp_path / "sa.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as info:
        main(["unlearn", str(config), "--output", str(tmp_path / "run"), f"model.path={tiny_sd_dir}",
              *[o for o in SMALL if not o.startswith("method.")]])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.endswith("method 'sa' forgets classes only; for forget.prompts use one "
                                                 "of: esd, ga, rl, salun, sfr_on, uce"), err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.partial"))


@pytest.mark.parametrize("family", ["ddpm", "dit", "sd", "sd3", "sdxl"])
def test_image_shape_is_what_sample_returns(family):
    """`image_shape` (used to refuse image counts that cannot fit in memory) matches a real sample's shape."""
    model = BUILDERS[family]()
    cond = model.tokenize(["a handwritten digit one"]) if model.conditioning == "text" else torch.tensor([1])
    images = model.sample(cond, torch.Generator().manual_seed(0), num_inference_steps=1, guidance_scale=1.0,
                          sampler=model.default_sampler)
    assert tuple(images.shape[1:]) == model.image_shape()


def test_stock_samples_loads_our_folder_with_stock_diffusers_and_judges_it(tmp_path, capsys):
    """eval/stock_samples.py: the SD3 folder through stock `StableDiffusion3Pipeline` (no T5), one line per prompt;
    an unknown family exits 2 naming the valid ones."""
    stock_main = runpy.run_path(str(Path(__file__).parents[1] / "eval" / "stock_samples.py"))["main"]
    tiny_sd3().save_pretrained(tmp_path / "sd3")
    stock_main([str(tmp_path / "sd3"), "--family", "sd3", "--prompts", "a handwritten digit seven", "--samples", "3",
                "--steps", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("StableDiffusion3Pipeline.from_pretrained(")
    assert re.fullmatch(r"'a handwritten digit seven': read as its digit [01]\.\d{3}; most common [a-z ]+ \(\d/3\); "
                        r"counts \[(\d, ){10}\d\]", lines[1])
    with pytest.raises(SystemExit) as exit_:
        stock_main([str(tmp_path / "sd3"), "--family", "flux", "--prompts", "x"])
    assert exit_.value.code == 2 and "family 'flux' is not one of sd, sdxl, sd3" in capsys.readouterr().err


SGD = ["train.optimizer=sgd", "train.momentum=0.0", "train.lr=0.01"]  # steps of norm <= 0.01 (clip 1.0)


@pytest.mark.parametrize("family", ["sd3", "sdxl"])
def test_baselines_forget_prompts_on_the_text_families(family, tmp_path):
    """GA, RL and SalUn on a concept: GA raises the forget prompt's loss; RL (retained_images) teaches the forget
    prompt the remain images; RL / SalUn pseudo_label is the MSE to the detached prediction under the anchor."""
    ga = family_trainer(family, tmp_path / "ga", SGD, method="ga")
    batch = ga.forget_batch(0)
    with torch.no_grad():
        before = ga.losses(batch, 0, stream=1).mean().item()
    ga.method.training_step(0)
    with torch.no_grad():
        assert ga.losses(batch, 0, stream=1).mean().item() > before

    rl = family_trainer(family, tmp_path / "rl", [*SGD, "method.remain_weight=0.0"], method="rl")
    forget_ids = rl.model.tokenize(["a handwritten digit seven"])
    relabelled = relabel_prompts(rl.remain_batch(0), forget_ids, rl.generator(0, 3))
    assert bool((relabelled["input_ids"] == forget_ids).all())
    assert not bool((rl.remain_batch(0)["input_ids"] == forget_ids).all(1).any())
    with torch.no_grad():
        before = rl.losses(relabelled, 0, stream=1).mean().item()
    rl.method.training_step(0)
    with torch.no_grad():
        assert rl.losses(relabelled, 0, stream=1).mean().item() < before

    pseudo = family_trainer(family, tmp_path / "pseudo", ["method.target=pseudo_label"], method="rl")
    model, forget = pseudo.model, pseudo.forget_batch(0)
    _, _, t, x_t = model.noised(forget, pseudo.generator(0, 1), pseudo.train_cfg.antithetic, pseudo.shard)
    with torch.no_grad():
        anchor = model.predict(x_t, t, model.condition({"input_ids": model.tokenize(["a handwritten digit one"])
                                                         .expand(len(x_t), -1)}))
        expected = torch.nn.functional.mse_loss(model.predict(x_t, t, model.condition(forget)), anchor)
        assert torch.allclose(pseudo.method.relabel_loss(0), expected, rtol=1e-5) and expected.item() > 0
