"""Step time and peak memory of one SFR-on iteration at real model sizes (random weights).

One iteration = a forget step then a remain step on one optimizer, with the operations of `Trainer.update`:
backward, gradient masked by a saliency mask, clipped to norm 1, optimizer step, masked-out elements restored
from a copy taken before the step, gradients cleared. Each step also encodes its pixel batch with a frozen VAE
(posterior mean, as the latent families train) and, for SD, its prompts with a frozen CLIP text encoder.

- DiT-XL/2 at 256 px (`DiTTransformer2DModel`, 32x32x4 latents, learned sigma): forget step = plain gradient
  ascent -alpha * mean_i l_i on the noise half of the 8 output channels (the reference DiT setup); AdamW.
- SD-1.x UNet at 512 px (`UNet2DConditionModel`, 64x64x4 latents, 77x768 text states): forget step =
  MSE(eps(z_t, c_forget), stopgrad eps(z_t, c_anchor)) (one extra no-grad UNet forward); Adam.

`tiny=True` swaps in small configs of the same classes so that the benchmark runs (and is tested) on a CPU.
"""

from __future__ import annotations

import gc
import platform
import statistics
import time
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..errors import UserError

# facebook/DiT-XL-2-256, transformer/config.json
DIT_XL_2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                patch_size=2, sample_size=32, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
                activation_fn="gelu-approximate", attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-5,
                dropout=0.0, upcast_attention=False, norm_num_groups=32)
DIT_TINY = {**DIT_XL_2, "num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2, "sample_size": 8,
            "num_embeds_ada_norm": 10}
# CompVis/stable-diffusion-v1-4, unet/config.json
SD_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
               block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32)
SD_UNET_TINY = {**SD_UNET, "sample_size": 8, "layers_per_block": 1, "block_out_channels": (32, 64),
                "cross_attention_dim": 32, "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "norm_num_groups": 8}
# the SD / sd-vae-ft-* VAE (DiT uses the same architecture): 8x downsampling, 4 latent channels
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              layers_per_block=2, norm_num_groups=32, scaling_factor=0.18215)
VAE_TINY = {**SD_VAE, "block_out_channels": (8, 16), "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2, "layers_per_block": 1, "norm_num_groups": 4}
# openai/clip-vit-large-patch14 text tower, SD 1.x's text encoder
CLIP_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406,
                 eos_token_id=49407, pad_token_id=1)
CLIP_TEXT_TINY = {**CLIP_TEXT, "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
                  "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 8,
                  "bos_token_id": 62, "eos_token_id": 63}
PRECISIONS = ("fp32", "bf16")
FORGET_ALPHA = {"dit": 1e-3, "sd": 1.0}


@dataclass
class Case:
    """One benchmarked model: network, frozen encoders, batch, optimizer."""

    name: str
    family: str
    network: torch.nn.Module
    vae: torch.nn.Module
    pixels: int
    batch_size: int
    optimizer: type
    lr: float
    text_encoder: torch.nn.Module = None
    extra: dict = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())


def build_case(family: str, tiny: bool, batch_size: int, device) -> Case:
    """The DiT-XL/2 or SD-1.x case (random weights, created directly on `device`)."""
    with torch.device(device):
        torch.manual_seed(0)
        vae = AutoencoderKL(**(VAE_TINY if tiny else SD_VAE)).eval().requires_grad_(False)
        if family == "dit":
            config = DIT_TINY if tiny else DIT_XL_2
            net = DiTTransformer2DModel(**config)
            pixels = config["sample_size"] * 2 ** (len(vae.config.block_out_channels) - 1)
            return Case("DiT-XL/2 (tiny)" if tiny else "DiT-XL/2", family, net.train(), vae, pixels, batch_size,
                        torch.optim.AdamW, 1e-4, extra={"num_classes": config["num_embeds_ada_norm"]})
        if family == "sd":
            config = SD_UNET_TINY if tiny else SD_UNET
            net = UNet2DConditionModel(**config)
            text = CLIPTextModel(CLIPTextConfig(**(CLIP_TEXT_TINY if tiny else CLIP_TEXT))).eval()
            pixels = config["sample_size"] * 2 ** (len(vae.config.block_out_channels) - 1)
            return Case("SD-1.x UNet (tiny)" if tiny else "SD-1.x UNet", family, net.train(), vae, pixels,
                        batch_size, torch.optim.Adam, 1e-5, text_encoder=text.requires_grad_(False))
    raise UserError(f"unknown benchmark model {family!r}; valid: dit, sd")


def random_mask(network, density: float = 0.5, seed: int = 0) -> dict:
    """{name: bool tensor}: a saliency-mask stand-in keeping `density` of each parameter's elements."""
    gen = torch.Generator(next(network.parameters()).device).manual_seed(seed)
    return {n: torch.rand(p.shape, generator=gen, device=p.device) < density for n, p in network.named_parameters()}


def masked_update(loss, params, optimizer, clip: float = 1.0, mask=None) -> None:
    """`Trainer.update` in plain torch: backward, mask, clip, step, restore masked-out elements, clear grads."""
    loss.backward()
    if mask is not None:
        for name, p in params:
            p.grad.mul_(mask[name])
    torch.nn.utils.clip_grad_norm_([p for _, p in params], clip)
    frozen = {name: p.detach().clone() for name, p in params} if mask is not None else {}
    optimizer.step()
    with torch.no_grad():
        for name, p in params:
            if name in frozen:
                p.copy_(torch.where(mask[name], p, frozen[name]))
    optimizer.zero_grad(set_to_none=True)


class Batches:
    """Fixed random pixel batches, labels / prompt ids and a DDPM noise schedule for one case."""

    def __init__(self, case: Case, device, seed: int = 0):
        gen = torch.Generator(device).manual_seed(seed)
        b, s = case.batch_size, case.pixels
        self.case, self.device, self.gen = case, device, gen
        self.pixels = [torch.rand(b, 3, s, s, generator=gen, device=device) * 2 - 1 for _ in range(2)]
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        if case.family == "dit":
            self.labels = torch.randint(0, case.extra["num_classes"], (2, b), generator=gen, device=device)
        else:
            cfg = case.text_encoder.config
            self.prompts = torch.randint(0, cfg.vocab_size, (2, b, cfg.max_position_embeddings), generator=gen,
                                         device=device)

    def noised(self, pixels):
        """(x_t, noise, t) from pixels via the frozen VAE (posterior mean, scaled)."""
        vae = self.case.vae
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=self.gen, device=self.device)
        t = torch.randint(0, 1000, (len(latents),), generator=self.gen, device=self.device)
        return self.scheduler.add_noise(latents, noise, t), noise, t

    def text(self, i):
        with torch.no_grad():
            return self.case.text_encoder(self.prompts[i]).last_hidden_state


def per_sample(a, b):
    return ((a.float() - b.float()) ** 2).sum(dim=(1, 2, 3))


def sfr_on_iteration(case: Case, batches: Batches, params, optimizer, mask, precision: str) -> None:
    """One SFR-on iteration: masked, clipped forget step, then clipped remain step (shared optimizer)."""
    autocast = torch.autocast(batches.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    net, alpha = case.network, FORGET_ALPHA[case.family]
    with autocast:
        x_t, noise, t = batches.noised(batches.pixels[0])
        if case.family == "dit":  # plain gradient ascent on the noise half of the learned-sigma output
            pred = net(x_t, timestep=t, class_labels=batches.labels[0]).sample[:, :noise.shape[1]]
            loss_f = -alpha * per_sample(pred, noise).mean()
        else:  # forget prompt's prediction pulled onto the anchor prompt's (stop-gradient)
            with torch.no_grad():
                target = net(x_t, t, encoder_hidden_states=batches.text(1)).sample
            loss_f = alpha * per_sample(net(x_t, t, encoder_hidden_states=batches.text(0)).sample, target).mean()
    masked_update(loss_f, params, optimizer, mask=mask)
    with autocast:
        x_t, noise, t = batches.noised(batches.pixels[1])
        if case.family == "dit":
            pred = net(x_t, timestep=t, class_labels=batches.labels[1]).sample[:, :noise.shape[1]]
        else:
            pred = net(x_t, t, encoder_hidden_states=batches.text(1)).sample
        loss_r = per_sample(pred, noise).mean()
    masked_update(loss_r, params, optimizer)


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(case: Case, precision: str, checkpointing: bool, warmup: int, iters: int, device) -> dict:
    """ms per iteration (median over `iters` after `warmup`) and peak allocated memory (CUDA only)."""
    if checkpointing:
        case.network.enable_gradient_checkpointing()
    else:
        case.network.disable_gradient_checkpointing()
    row = {"model": case.name, "params_M": round(case.num_parameters / 1e6, 2), "batch": case.batch_size,
           "pixels": case.pixels, "precision": precision, "grad_ckpt": checkpointing}
    params = [(n, p) for n, p in case.network.named_parameters()]
    optimizer = case.optimizer([p for _, p in params], lr=case.lr)
    try:
        mask, batches = random_mask(case.network), Batches(case, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for i in range(warmup + iters):
            synchronize(device)
            start = time.perf_counter()
            sfr_on_iteration(case, batches, params, optimizer, mask, precision)
            synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        row["ms_per_iter"] = round(1000 * statistics.median(times), 1)
        row["peak_mem_GiB"] = (round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
                               if device.type == "cuda" else None)
    except torch.cuda.OutOfMemoryError:
        row["ms_per_iter"], row["peak_mem_GiB"] = None, "OOM"
    finally:
        optimizer.zero_grad(set_to_none=True)
        del optimizer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_benchmark(models=("dit", "sd"), precisions=PRECISIONS, checkpointing=(False,), tiny: bool = False,
                  batch_sizes=None, warmup: int = 2, iters: int = 5, device=None) -> list:
    """Rows (dicts) for every model x precision x checkpointing setting."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and not tiny:
        raise UserError("full-size DiT-XL/2 and SD UNets are GPU benchmarks; on a CPU pass --tiny")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise UserError(f"unknown precision {bad[0]!r}; valid: {', '.join(PRECISIONS)}")
    batch_sizes = {"dit": 16, "sd": 2, **(batch_sizes or {})}
    rows = []
    for family in models:
        case = build_case(family, tiny, batch_sizes[family], device)
        for precision in precisions:
            for ckpt in checkpointing:
                rows.append({**time_case(case, precision, ckpt, warmup, iters, device),
                             "device": device_name(device)})
        del case
        gc.collect()
    return rows


def markdown_table(rows: list) -> str:
    devices = sorted({r["device"] for r in rows})
    lines = [f"Device: {', '.join(devices)}; torch {torch.__version__}", "",
             "| model | params (M) | batch | px | precision | grad ckpt | ms / iteration | peak memory (GiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = "-" if r["ms_per_iter"] is None else f"{r['ms_per_iter']:.1f}"
        mem = "n/a (CPU)" if r["peak_mem_GiB"] is None else str(r["peak_mem_GiB"])
        lines.append(f"| {r['model']} | {r['params_M']} | {r['batch']} | {r['pixels']} | {r['precision']} | "
                     f"{'on' if r['grad_ckpt'] else 'off'} | {ms} | {mem} |")
    return "\n".join(lines)
