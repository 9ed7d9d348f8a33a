"""Sampling throughput of the stock diffusers pipelines at the settings users run (steps, guidance, resolution),
denoiser and VAE in bf16, text conditioning passed as embeddings (the text encoders run once per prompt)."""

from __future__ import annotations

import time

import torch
from diffusers import (DDIMScheduler, DiTPipeline, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline,
                       StableDiffusionPipeline, StableDiffusionXLPipeline)

from .steps import synchronize


def stock_pipeline(case):
    """The family's stock pipeline around the case's denoiser and VAE (no text encoders)."""
    spec, net, vae = case.spec, case.network, case.vae
    if spec.key == "sd3":
        return StableDiffusion3Pipeline(transformer=net, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                        text_encoder_3=None, tokenizer_3=None)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if spec.key == "dit":
        return DiTPipeline(transformer=net, vae=vae, scheduler=DDIMScheduler(num_train_timesteps=1000))
    if spec.key == "sdxl":
        return StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                         tokenizer_2=None, unet=net, scheduler=scheduler)
    return StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=net, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def call_kwargs(case, batch: int, dtype) -> dict:
    spec = case.spec
    if spec.text is None:
        return {"class_labels": list(range(batch))}
    cond, uncond = case.condition(batch), case.condition(batch)
    kwargs = {"prompt_embeds": cond["encoder_hidden_states"].to(dtype),
              "negative_prompt_embeds": uncond["encoder_hidden_states"].to(dtype)}
    if spec.pooled:
        pooled = cond.get("pooled_projections", cond.get("added_cond_kwargs", {}).get("text_embeds"))
        negative = uncond.get("pooled_projections", uncond.get("added_cond_kwargs", {}).get("text_embeds"))
        kwargs.update(pooled_prompt_embeds=pooled.to(dtype), negative_pooled_prompt_embeds=negative.to(dtype))
    return kwargs


@torch.no_grad()
def sampling_throughput(case, batch: int = None, steps: int = None, dtype=torch.bfloat16) -> dict:
    """Images per second of one guided batch (after a 2-step warm-up call), decode included."""
    spec = case.spec
    batch, steps = batch or spec.sample_batch, steps or spec.sample_steps
    case.network.to(dtype).eval()
    case.vae.to(dtype)
    try:
        pipe = stock_pipeline(case)
        pipe.set_progress_bar_config(disable=True)
        kwargs = call_kwargs(case, batch, dtype)
        gen = torch.Generator(case.device).manual_seed(0)
        pipe(**kwargs, num_inference_steps=2, guidance_scale=spec.guidance, generator=gen, output_type="np")
        synchronize(case.device)
        start = time.perf_counter()
        images = pipe(**kwargs, num_inference_steps=steps, guidance_scale=spec.guidance, generator=gen,
                      output_type="np").images
        synchronize(case.device)
        seconds = time.perf_counter() - start
    finally:
        case.network.to(torch.float32).train()
        case.vae.to(torch.float32)
    return {"model": spec.name, "pipeline": type(pipe).__name__, "batch": batch, "steps": steps,
            "guidance": spec.guidance, "px": images.shape[1], "dtype": str(dtype).replace("torch.", ""),
            "seconds": round(seconds, 2), "images_per_s": round(batch / seconds, 2)}
