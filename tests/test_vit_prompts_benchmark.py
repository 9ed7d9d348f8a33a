"""The digits ViT recipe (stage 1, and its prompt-tuned sibling) and the visual-prompt rows of the classifier
benchmark, on a tiny recipe: what is saved loads with stock transformers, the backbone stays frozen, the benchmark
writes every row of both scenarios."""

import pytest
import torch
from transformers import ViTForImageClassification

from diffunlearn.recipes.vit import PROMPT_INIT_FILE, ViTRecipe, load_prompted_vit, prompt_tune, train_vit_models

SETTINGS = {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 32, "epochs": 2, "prompt_epochs": 2,
            "prompt_tokens": 3, "batch_size": 128}
TINY = [f"{k}={v}" for k, v in SETTINGS.items()]


@pytest.fixture(scope="module")
def tiny_vit_dirs(tmp_path_factory):
    out = tmp_path_factory.mktemp("vit") / "digits_vit"
    entry = train_vit_models("configs/recipes/digits_vit.yaml", str(out), TINY)
    return out, out.parent / "digits_vit_prompted", entry


def test_the_recipe_saves_a_stock_vit_and_a_prompted_sibling(tiny_vit_dirs):
    vit_dir, prompted_dir, entry = tiny_vit_dirs
    assert 0.0 <= entry["test_accuracy"] <= 1.0 and entry["recipe"]["hidden_size"] == 16
    vit = ViTForImageClassification.from_pretrained(vit_dir, use_safetensors=True).eval()
    prompted = load_prompted_vit(prompted_dir)
    assert prompted.visual_prompts.tokens.shape == (1, 3, 16)
    assert (prompted_dir / PROMPT_INIT_FILE).is_file() and (prompted_dir / "visual_prompts.safetensors").is_file()
    frozen = {n: p for n, p in vit.named_parameters() if not n.startswith("classifier")}
    for name, p in prompted.named_parameters():  # the sibling's backbone is the stage-1 model's
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    assert not torch.equal(prompted.classifier.weight, vit.classifier.weight)


def test_prompt_tuning_trains_prompts_and_head_only_and_is_seeded(tiny_vit_dirs):
    from diffunlearn.data import load_digits_splits

    vit = ViTForImageClassification.from_pretrained(tiny_vit_dirs[0], use_safetensors=True).eval()
    recipe = ViTRecipe(**SETTINGS)
    train, _ = load_digits_splits()
    subset = train.select_classes([0, 1, 2])
    first, w0 = prompt_tune(vit, recipe, subset, progress=False)
    second, _ = prompt_tune(vit, recipe, subset, progress=False)
    assert sorted(w0) == ["classifier.bias", "classifier.weight", "visual_prompts.tokens"]
    assert torch.equal(first.visual_prompts.tokens, second.visual_prompts.tokens)
    before = dict(vit.named_parameters())
    for name, p in first.named_parameters():
        if name in before and not name.startswith("classifier"):
            assert torch.equal(p, before[name]), name
    assert not torch.equal(first.visual_prompts.tokens, w0["visual_prompts.tokens"])


def test_the_visual_prompt_benchmark_writes_every_row(tiny_vit_dirs, tmp_path):
    from diffunlearn.benchmarks.classifier_prompts import run_classifier_benchmark

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("".join(f"{k}: {v}\n" for k, v in SETTINGS.items()))
    config = tmp_path / "bench.yaml"
    config.write_text(f"family: vit_prompts\nmodel: {tiny_vit_dirs[1]}\nrecipe: {recipe}\n"
                      "scenarios:\n  class: {forget_classes: [7]}\n  random: {forget_fraction: 0.05, seeds: [0]}\n")
    rows, checks = run_classifier_benchmark(config, tmp_path / "out", progress=lambda m: None)
    methods = ["RT", "Original", "Fast-NTK (prompt)", "Fast-NTK (prompt + head)", "Fast-NTK (head)"]
    assert [r["method"] for r in rows] == methods * 2
    assert all(0.0 <= r["FA"] <= 1.0 and r["D_KL"] >= 0 for r in rows)
    assert [claim.split("]")[0] for claim, _ in checks] == ["[class"] * 4 + ["[random"] * 4
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| Fast-NTK (prompt + head) |" in table and (tmp_path / "out" / "results.csv").is_file()
