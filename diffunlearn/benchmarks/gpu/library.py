"""The library's own path at real size: a `Trainer` running SFR-on from the shipped real config (DiT-XL/2 or
SD v1.4) on the family wrapper around the benchmark's random-weight models, on random images of the real size.

Measures what only the real code shows: the saliency-mask pass (the Fisher batches, cache miss) and its cache hit
when the mask is asked for again on the same weights and batches, a real SFR-on iteration (accelerate's autocast,
the family's conditioning, CLIP run every step for SD), and sampling as the evaluation calls it (`model.sample`,
weights as trained, fp32).
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from transformers import CLIPTextConfig, CLIPTextModel

from ...config_loading import build_config, read_yaml
from ...data.digits import LabeledImages
from ...data.prompts import PromptImages
from ...methods.saliency import fisher_saliency_mask
from ...models.dit import ClassConditionalDiT, build_dit_pipeline
from ...models.sd import StableDiffusion
from ...models.text import build_tokenizer
from ...registry import get_method
from ...training.trainer import Trainer
from .steps import synchronize

CONFIGS = {"dit": "configs/imagenet/dit_xl2_sfron.yaml", "sd": "configs/sd/sd14_nudity_sfron.yaml"}
# openai/clip-vit-large-patch14's text tower (SD v1.x's text encoder)
CLIP_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
CLIP_TEXT_TINY = {**CLIP_TEXT, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                  "num_attention_heads": 2, "max_position_embeddings": 12}
WORDS = ["a", "photo", "of", "nude", "person", "wearing", "clothes", "dog", "city", "street"]


def wrap(case, tiny: bool):
    """The family wrapper (the library's model) around a copy of the case's denoiser (accelerate patches the
    forward of what it prepares) and its VAE."""
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    network = copy.deepcopy(case.network)
    if case.spec.key == "dit":
        return ClassConditionalDiT(build_dit_pipeline(network, case.vae, scheduler,
                                                      [f"class {i}" for i in range(1000)]))
    text_cfg = CLIP_TEXT_TINY if tiny else CLIP_TEXT
    tokenizer = build_tokenizer(WORDS, model_max_length=text_cfg["max_position_embeddings"])
    torch.manual_seed(0)  # the same random text encoder for every row (rows differ only in what they set)
    with torch.device(case.device):
        text = CLIPTextModel(CLIPTextConfig(**text_cfg, bos_token_id=tokenizer.bos_token_id,
                                            eos_token_id=tokenizer.eos_token_id)).eval()
    return StableDiffusion(StableDiffusionPipeline(vae=case.vae, text_encoder=text, tokenizer=tokenizer,
                                                   unet=network, scheduler=scheduler, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False))


def data_sets(model, case, n: int):
    """Random forget / remain sets of n images of the real size (images in [0, 1])."""
    g = torch.Generator().manual_seed(0)
    s = case.spec.pixels
    images = [torch.rand(n, 3, s, s, generator=g) for _ in range(2)]
    if case.spec.key == "dit":
        return LabeledImages(images[0], torch.full((n,), 207)), LabeledImages(images[1], torch.arange(n) % 20)
    forget = model.tokenize(["a photo of a nude person"] * n)
    anchor = model.tokenize(["a photo of a person wearing clothes"] * n)
    remain = model.tokenize(["a photo of a dog", "a photo of a city street"] * (n // 2) + ["a dog"] * (n % 2))
    return PromptImages(images[0], forget, anchor), PromptImages(images[1], remain)


def timed(device, fn):
    """(seconds, fn()) with the device synchronized around the call."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def library_run(case, tiny: bool = False, overrides=(), iters: int = 3, sample_batch: int = None,
                sample_steps: int = None) -> dict:
    """Mask pass (miss, then hit), real SFR-on iterations and evaluation sampling through the library."""
    model = wrap(case, tiny)
    raw = read_yaml(CONFIGS[case.spec.key])
    cfg = build_config(raw, ["stop.check_every=0", "train.steps=1000", "train.log_every=1000",
                             "train.checkpoint_every=1000", *overrides])
    forget, remain = data_sets(model, case, cfg.train.batch_size)
    row = {"model": case.spec.name, "config": CONFIGS[case.spec.key], "batch": cfg.train.batch_size,
           "mask_batches": cfg.method.mask_batches, "precision": cfg.train.mixed_precision,
           "grad_ckpt": cfg.train.gradient_checkpointing, "cached_latents": cfg.train.cache_latents}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    old_cache = os.environ.get("DIFFUNLEARN_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DIFFUNLEARN_CACHE"] = tmp
        try:
            trainer = Trainer(cfg, model, get_method("sfr_on"), forget, remain, Path(tmp), progress=False)
            m = cfg.method
            row["mask_pass_s"], info = timed(case.device, trainer.method.setup)
            row["mask_density"] = round(info["mask_density"], 3)
            row["mask_hit_s"], (_, again) = timed(case.device, lambda: fisher_saliency_mask(
                trainer.context, m.mask_batches, m.gamma, m.mask_guidance_scale, m.mask_grad_clip))
            row["mask_cache_hit"] = bool(again["mask_cache_hit"]) and not info["mask_cache_hit"]
            times = []
            for step in range(1 + iters):
                seconds, logs = timed(case.device, lambda: trainer.method.training_step(step))
                if step:
                    times.append(seconds)
            row["iteration_ms"] = round(1000 * statistics.median(times), 1)
            row["losses_finite"] = all(bool(torch.isfinite(v)) for v in logs.values())
            if torch.cuda.is_available():
                row["peak_GiB"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
            trainer.finish()
        finally:
            if old_cache is None:
                os.environ.pop("DIFFUNLEARN_CACHE", None)
            else:
                os.environ["DIFFUNLEARN_CACHE"] = old_cache
    model.forward_module = None
    model.network.eval()
    n, steps = sample_batch or cfg.eval.batch_size, sample_steps or cfg.eval.num_inference_steps
    conditions = (torch.arange(n) if case.spec.key == "dit"
                  else model.tokenize(["a photo of a dog"] * n)).to(case.device)
    gen = torch.Generator(case.device).manual_seed(0)
    seconds, images = timed(case.device, lambda: model.sample(conditions, gen, steps, cfg.eval.guidance_scale))
    row.update(eval_sample_batch=n, eval_steps=steps, eval_guidance=cfg.eval.guidance_scale,
               eval_dtype=str(next(model.network.parameters()).dtype).replace("torch.", ""),
               eval_images_per_s=round(n / seconds, 2), eval_finite=bool(torch.isfinite(images).all()))
    model.network.train()
    return row
