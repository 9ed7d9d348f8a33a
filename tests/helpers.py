"""Shared builders for tests."""

import hashlib
from pathlib import Path

from diffunlearn.config_loading import build_config, read_yaml
from diffunlearn.data import load_digits_splits
from diffunlearn.registry import get_method
from diffunlearn.training.trainer import Trainer

MAIN_CONFIG = "configs/digits/ddpm_sfron.yaml"


def make_trainer(model, tmp_path, overrides=(), forget_classes=(7,), method=None):
    """A Trainer on the digits forget/remain split with the main config plus `overrides`; `method` replaces the
    config's SFR-on section by that method's defaults."""
    raw = read_yaml(MAIN_CONFIG)
    if method:
        raw["method"] = {"name": method}
    else:
        overrides = ["method.mask_batches=2", *overrides]
    cfg = build_config(raw, ["train.batch_size=16", f"forget.classes={list(forget_classes)}", *overrides])
    train, _ = load_digits_splits()
    forget_set, remain_set = train.forget_remain(cfg.forget.classes)
    return Trainer(cfg, model, get_method(cfg.method.name), forget_set, remain_set, tmp_path, progress=False)


def snapshot(trainer):
    return {name: p.detach().clone() for name, p in trainer.params}


def folder_digest(folder) -> str:
    """sha256 over every file's relative path and bytes: equal digests mean an unchanged folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def assert_recipe_trained(before, model, prompt: str) -> None:
    """A text-to-image recipe run moved the denoiser and every text encoder away from their seeded init (`before`,
    built the same way), left the encoders frozen, and the model samples (B, C, H, W) images in [0, 1]."""
    import torch

    for a, b in zip([before.network] + before.text_encoders(), [model.network] + model.text_encoders()):
        assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not any(p.requires_grad for e in model.text_encoders() for p in e.parameters())
    images = model.sample(model.tokenize([prompt]), [torch.Generator().manual_seed(0)], 2, 2.0,
                          sampler=model.default_sampler)
    assert images.shape == (1, *model.image_shape()) and 0 <= float(images.min()) and float(images.max()) <= 1
