"""What a run forgets and what it keeps: class or prompt targets, the data sets D_f / D_r they give, and the
evaluation targets the judge scores.

Class forgetting (DDPM, DiT): `forget.classes`; D_f / D_r are the real digits of those classes and of the others
(`data.name=digits`) or base-model samples (`data.name=generated`, e.g. ImageNet classes of a DiT).
Concept forgetting (SD): `forget.prompts` mapped onto `forget.anchors`; D_f is the base model's images for the
forget prompts (each paired with its anchor prompt), D_r its images for the anchors and `forget.remain_prompts`.
"""

from __future__ import annotations

import dataclasses
import zlib

import torch

from ..errors import UserError
from ..registry import FAMILIES
from ..run_folder import model_digest
from . import LabeledImages, load_digits_splits
from .generated import generate_cached, image_seed
from .prompts import PromptImages


def prompt_seed_key(prompt: str) -> int:
    """A stable per-prompt seed offset (independent of which other prompts a run uses)."""
    return zlib.crc32(prompt.encode()) % 10_000


def check_target(cfg, model) -> None:
    """Refuse a forget target the model cannot take (before anything is written)."""
    concept = cfg.forget.is_concept
    if concept != (model.conditioning == "text"):  # the family contract: models/base.py CONDITIONINGS
        wanted = "text" if concept else "class"
        valid = sorted(name for name, family in FAMILIES.items() if getattr(family, "conditioning", None) == wanted)
        what = ("forgets classes (forget.classes), not prompts" if concept
                else "forgets prompts (forget.prompts / forget.anchors), not classes")
        raise UserError(f"model family {cfg.model.family!r} {what}; "
                        f"{'forget.prompts' if concept else 'forget.classes'} needs one of: {', '.join(valid)}")
    if hasattr(model, "check_sampler"):  # diffusion families (classifiers do not sample)
        model.check_sampler(cfg.eval.sampler)
    if concept:
        for key, scale in (("data.generation_guidance", cfg.data.generation_guidance or 0),
                           ("eval.guidance_scale", cfg.eval.guidance_scale)):
            if 0 < scale < 1:  # the stock text-to-image pipelines only guide above 1
                raise UserError(f"{key} {scale} is not supported by the {cfg.model.family} family; "
                                "valid: 0 (unconditional), 1 (conditional) or > 1 (classifier-free guidance)")
        model.tokenize(list(cfg.forget.prompts) + list(cfg.forget.anchors) + list(cfg.forget.remain_prompts))
        return
    bad = [c for c in cfg.forget.classes if c >= model.num_classes]
    if bad:
        raise UserError(f"forget.classes {bad} out of range; valid: 0..{model.num_classes - 1}")
    remain = remain_classes(cfg, model)
    if not remain:
        raise UserError(f"forget.classes {list(cfg.forget.classes)} covers every class; the remain set is empty")
    if cfg.data.remain_classes is not None and set(cfg.data.remain_classes) & set(cfg.forget.classes):
        raise UserError(f"data.remain_classes {list(cfg.data.remain_classes)} and forget.classes "
                        f"{list(cfg.forget.classes)} overlap; a class cannot be both forgotten and kept")


def remain_classes(cfg, model) -> list:
    if cfg.data.remain_classes is not None:
        return [c for c in cfg.data.remain_classes if 0 <= c < model.num_classes]
    return [c for c in range(model.num_classes) if c not in cfg.forget.classes]


def base_model_key(path: str) -> str:
    """Identity of the base weights for caches: a digest of a local folder's weights, an in-memory model's key
    (`memory:...`, `models.loading.memory_key`), else the Hub id (`run_folder.model_digest`, which results'
    identities use too)."""
    return model_digest(path)


def _generate(model, conditions, seed_keys, per_target, cfg, model_key) -> torch.Tensor:
    seeds = [image_seed(cfg.data.generation_seed, k, j) for k in seed_keys for j in range(per_target)]
    conds = torch.cat([c.unsqueeze(0).expand(per_target, *c.shape) for c in conditions])
    guidance = cfg.data.generation_guidance
    eval_cfg = cfg.eval if guidance is None else dataclasses.replace(cfg.eval, guidance_scale=guidance)
    return generate_cached(model, conds, seeds, eval_cfg, model_key)


def build_sets(cfg, model, model_path: str) -> tuple:
    """(D_f, D_r) for the run's forget target and data source."""
    n = cfg.data.samples_per_target
    if cfg.forget.is_concept:
        f = cfg.forget
        anchors = [f.anchor_for(i) for i in range(len(f.prompts))]
        keep = list(dict.fromkeys(list(f.anchors) + list(f.remain_prompts)))
        ids = model.tokenize(list(f.prompts) + anchors + keep)
        p_ids, a_ids, k_ids = ids[:len(f.prompts)], ids[len(f.prompts):2 * len(f.prompts)], ids[2 * len(f.prompts):]
        key = base_model_key(model_path)
        forget_images = _generate(model, list(p_ids), [prompt_seed_key(p) for p in f.prompts], n, cfg, key)
        remain_images = _generate(model, list(k_ids), [prompt_seed_key(p) for p in keep], n, cfg, key)
        return (PromptImages(forget_images, p_ids.repeat_interleave(n, 0), a_ids.repeat_interleave(n, 0)),
                PromptImages(remain_images, k_ids.repeat_interleave(n, 0)))
    if cfg.data.name == "digits":
        train, _ = load_digits_splits(cfg.data.split_seed, cfg.data.test_fraction)
        return (train.select_classes(cfg.forget.classes),
                train.select_classes(remain_classes(cfg, model)))
    key = base_model_key(model_path)
    sets = []
    for classes in (list(cfg.forget.classes), remain_classes(cfg, model)):
        images = _generate(model, [torch.tensor(c) for c in classes], classes, n, cfg, key)
        sets.append(LabeledImages(images, torch.tensor(classes).repeat_interleave(n)))
    return tuple(sets)


