"""Pipelines in, pipelines out: `diffunlearn.from_pretrained`, `unlearn`, `evaluate`, `UnlearnResult` on the three
families' tiny models (built from configs), what a run saves (no absolute paths, a card the Hub parses), and the
offline part of `push_to_hub`."""

import hashlib
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_ddpm
from diffusers import DiTPipeline, StableDiffusionPipeline
from huggingface_hub import ModelCard
from test_dit import tiny_dit
from test_sd import tiny_sd
from test_sd3 import tiny_sd3
from test_sdxl import tiny_sdxl

import diffunlearn
from diffunlearn.errors import UserError

FAST = {"stop.check_every": 0, "method.mask_batches": 2, "train.batch_size": 8, "data.samples_per_target": 8,
        "eval.forget_samples": 8, "eval.retained_samples_per_class": 4, "eval.num_inference_steps": 2,
        "eval.gallery_per_class": 2, "eval.batch_size": 64}


def weights_hash(pipe) -> str:
    digest = hashlib.sha256()
    for name, module in sorted(pipe.components.items()):
        if isinstance(module, torch.nn.Module):
            for key, value in sorted(module.state_dict().items()):
                digest.update(f"{name}.{key}".encode())
                digest.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def absolute_paths_in(folder: Path, needles) -> list:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".yaml", ".md", ".html", ".jsonl", ".txt"):
            text = path.read_text(errors="ignore")
            hits += [f"{path.relative_to(folder)}: {n}" for n in needles if n in text]
    return hits


STOCK_KWARGS = {"sd": {"safety_checker": None, "requires_safety_checker": False},
                "sd3": {"text_encoder_3": None, "tokenizer_3": None}}


@pytest.mark.parametrize("family", ["ddpm", "dit", "sd", "sd3", "sdxl"])
def test_unlearn_a_pipeline_returns_the_same_class_and_leaves_the_input_alone(family, tmp_path):
    model = {"ddpm": tiny_ddpm, "dit": tiny_dit, "sd": tiny_sd, "sd3": tiny_sd3, "sdxl": tiny_sdxl}[family]()
    pipe = model.pipeline
    before = weights_hash(pipe)
    prompts = {"forget": "a handwritten digit seven", "anchor": "a handwritten digit one"}
    forget = {"ddpm": {"forget": [7]}, "dit": {"forget": ["seven"]},  # DiT: names through get_label_ids
              "sd": prompts, "sd3": prompts, "sdxl": prompts}[family]
    result = diffunlearn.unlearn(pipe, **forget, seed=0, steps=2, config=f"configs/digits/{family}_sfron.yaml",
                                 overrides=FAST, evaluate=False, progress=False, output=tmp_path / "run")
    assert type(result.pipeline) is type(pipe)
    assert weights_hash(pipe) == before, "the input pipeline must not change"
    assert weights_hash(result.pipeline) != before, "the unlearned pipeline must differ"
    if family.startswith("sd"):
        assert result.report["forget_prompts"] == ["a handwritten digit seven"]
    else:
        assert result.report["forget_classes"] == [7]
    assert result.report["config"]["train"]["steps"] == 2 and result.report["config"]["seed"] == 0
    env = result.report["environment"]
    assert env["processes"] == 1 and env["device"] == "cpu" and env["versions"]["diffusers"]
    result.save_pretrained(tmp_path / "saved")
    again = diffunlearn.from_pretrained(str(tmp_path / "saved"))  # the run folder loads as its pipeline
    assert type(again) is type(pipe) and weights_hash(again) == weights_hash(result.pipeline)
    stock = type(pipe).from_pretrained(tmp_path / "saved", **STOCK_KWARGS.get(family, {}))  # the pair HF users expect
    assert weights_hash(stock) == weights_hash(result.pipeline)
    needles = [str(tmp_path), os.getcwd() + "/", str(Path.home()) + "/", "/tmp/diffunlearn-"]
    assert absolute_paths_in(tmp_path / "saved", needles) == []


def test_evaluated_run_card_parses_and_push_stages_the_folder(tiny_ddpm_dir, tiny_classifier_dir, tmp_path,
                                                               monkeypatch):
    """With evaluation: the card's YAML parses with huggingface_hub's ModelCard (model-index with the protocol),
    no base_model for a local base, no absolute path in any file; push_to_hub creates the repo and uploads the
    folder save_pretrained writes: the pipeline at the root with its card, the report and gallery beside it (the
    two Hub calls recorded, nothing sent)."""
    from huggingface_hub import HfApi

    pipe = diffunlearn.from_pretrained(str(tiny_ddpm_dir))
    result = diffunlearn.unlearn(pipe, forget=[7], steps=2, progress=False, output=tmp_path / "run",
                                 overrides={**FAST, "eval.classifier": str(tiny_classifier_dir)})
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert card.data.library_name == "diffusers" and card.data.base_model is None
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics["forget_accuracy"] == pytest.approx(result.report["unlearned"]["forget_accuracy"], abs=1e-4)
    assert {"retained_accuracy", "fid"} <= set(metrics)
    needles = [str(tmp_path), str(tiny_ddpm_dir), str(tiny_classifier_dir), os.getcwd() + "/"]
    assert absolute_paths_in(tmp_path / "run", needles) == []
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id)))

    def upload_folder(self, folder_path, repo_id, **kw):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        calls.append(("upload", repo_id, files))

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    result.push_to_hub("me/ddpm-without-seven")
    assert calls[0] == ("create", "me/ddpm-without-seven")
    files = calls[1][2]
    assert {"model_index.json", "README.md", "unet/diffusion_pytorch_model.safetensors",
            "report.json", "config.yaml", "gallery/index.html"} <= set(files)
    result.save_pretrained(tmp_path / "saved")
    saved = sorted(str(p.relative_to(tmp_path / "saved")) for p in (tmp_path / "saved").rglob("*") if p.is_file())
    assert saved == files, "push_to_hub uploads what save_pretrained writes"


def test_card_names_a_hub_base_model_only():
    from diffunlearn.config_loading import load_config
    from diffunlearn.evaluation.report import card_metadata

    cfg = load_config("configs/sd/sd14_nudity_sfron.yaml")
    assert card_metadata(cfg, {"base_model": "CompVis/stable-diffusion-v1-4"})["base_model"] == \
        "CompVis/stable-diffusion-v1-4"
    for local in ("embedded:digits/sd", "./out/base", "<local>/base", "configs/sd"):  # the last: a local folder
        assert "base_model" not in card_metadata(cfg, {"base_model": local})


@pytest.mark.parametrize("name, cls", [("embedded:digits/ddpm", diffunlearn.ClassConditionalDDPMPipeline),
                                       ("embedded:digits/dit", DiTPipeline),
                                       ("embedded:digits/sd", StableDiffusionPipeline)])
def test_from_pretrained_gives_each_family_its_pipeline_class(name, cls):
    assert type(diffunlearn.from_pretrained(name)) is cls


def test_bad_calls_name_the_bad_value_and_the_valid_ones(tmp_path):
    pipe = tiny_ddpm().pipeline
    with pytest.raises(UserError, match=r"unknown keyword\(s\) \['stepz'\]; valid"):
        diffunlearn.unlearn(pipe, forget=[7], stepz=3)
    with pytest.raises(UserError, match="anchor"):
        diffunlearn.unlearn(pipe, forget=[7], anchor="a handwritten digit one")
    with pytest.raises(UserError, match="class names"):
        diffunlearn.unlearn(pipe, forget=["seven"])
    with pytest.raises(UserError, match="unsupported pipeline list; valid"):
        diffunlearn.unlearn([1, 2], forget=[7])
    with pytest.raises(UserError, match="train.lr"):  # a bad value fails validation before anything runs
        diffunlearn.unlearn(pipe, forget=[7], lr=float("nan"), output=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="output"):
        diffunlearn.unlearn("configs/digits/ddpm_sfron.yaml")
