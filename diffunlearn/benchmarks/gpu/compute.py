"""How much of the GPU a step uses, and what `torch.compile` buys.

FLOPs of one SFR-on iteration are counted two ways: by `torch.utils.flop_counter.FlopCounterMode` on a real
iteration (every matmul, convolution and attention kernel that ran, forward and backward, the frozen VAE's encode
included), and from the transformer's size: 6 * N * tokens per sample for forward + backward of the linear layers
(N = parameters of the transformer blocks but their adaLN modulation, which runs once per sample) plus
12 * layers * tokens^2 * width for attention scores and values.
Achieved rate = counted FLOPs / measured iteration time; its share is given against the datasheet's dense bf16
peak and against a bf16 8192^3 matmul measured on the same card in the same run.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from .cases import set_subset
from .steps import autocast, iteration, make_optimizer, measure, random_mask, synchronize

DATASHEET_BF16_DENSE_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def datasheet_peak(device_name: str):
    for key, tflops in DATASHEET_BF16_DENSE_TFLOPS.items():
        if key in device_name:
            return tflops
    return None


def matmul_tflops(device, n: int = 8192, reps: int = 10) -> float:
    """bf16 n^3 matmul rate on random data (mean of `reps` after 3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e12


def counted_flops(case, batch_size: int, precision: str = "bf16", kind: str = "sfr_on") -> tuple:
    """(all, VAE-encode) FLOPs of one iteration as FlopCounterMode counts them."""
    params = set_subset(case.spec, case.network, "all")
    optimizer = make_optimizer(case, params)
    mask = random_mask(params) if kind == "sfr_on" else None
    batch = case.batch(batch_size)
    with FlopCounterMode(display=False) as counter:
        iteration(case, batch, params, optimizer, mask, precision, kind)
    with FlopCounterMode(display=False) as vae, autocast(case.device, precision):
        case.latents(batch["pixels"])
    del optimizer, mask
    encodes = 2 if kind == "sfr_on" else 1
    return counter.get_total_flops(), encodes * vae.get_total_flops()


def dit_analytic_flops(case, batch_size: int, kind: str = "sfr_on") -> float:
    """6 * N_blocks * T + 12 * L * T^2 * D per sample and training pass (2 passes for SFR-on, 1 for FT)."""
    cfg = case.network.config
    tokens = (cfg.sample_size // cfg.patch_size) ** 2
    width = cfg.num_attention_heads * cfg.attention_head_dim
    blocks = sum(p.numel() for n, p in case.network.named_parameters()  # adaLN modulation runs once per sample
                 if n.startswith("transformer_blocks.") and ".norm1." not in n)
    per_sample = 6 * blocks * tokens + 12 * cfg.num_layers * tokens ** 2 * width
    return per_sample * batch_size * (2 if kind == "sfr_on" else 1)


def utilisation(case, step_row: dict, device_name: str, measured_peak: float) -> dict:
    """Achieved TFLOP/s of the timed iteration in `step_row` and its share of the peaks."""
    flops, vae_flops = counted_flops(case, step_row["batch"], step_row["precision"], step_row["kind"])
    analytic = dit_analytic_flops(case, step_row["batch"], step_row["kind"]) if case.spec.key == "dit" else None
    rate = flops / (step_row["ms"] / 1000) / 1e12
    peak = datasheet_peak(device_name)
    return {"model": case.spec.name, "kind": step_row["kind"], "batch": step_row["batch"],
            "precision": step_row["precision"], "grad_ckpt": step_row["grad_ckpt"], "ms": step_row["ms"],
            "counted_TFLOP": flops / 1e12, "vae_encode_TFLOP": vae_flops / 1e12,
            "analytic_TFLOP": analytic / 1e12 if analytic else None,
            "achieved_TFLOPs": rate, "datasheet_peak": peak,
            "share_of_datasheet": round(rate / peak, 3) if peak else None,
            "measured_matmul_TFLOPs": round(measured_peak, 1) if measured_peak else None,
            "share_of_measured": round(rate / measured_peak, 3) if measured_peak else None}


def compile_row(case, batch_size: int, precision: str = "bf16", iters: int = 3) -> dict:
    """`torch.compile` of the denoiser against eager: the same loss on the same inputs (bf16 tolerance), the
    compile time (first iteration) and the steady SFR-on iteration time of both, measured back to back."""
    eager = measure(case, precision, False, "sfr_on", batch_size, iters=iters)
    batch = case.batch(batch_size)

    def loss(seed, precision):
        case.gen.manual_seed(seed)
        with torch.no_grad(), autocast(case.device, precision):
            return float(case.task_loss(batch))

    reference, exact = loss(1, precision), loss(1, "fp32")
    case.forward_net = torch.compile(case.network)
    try:
        start = time.perf_counter()
        compiled_loss = loss(1, precision)
        synchronize(case.device)
        first_forward_s = time.perf_counter() - start
        compiled_exact = loss(1, "fp32")
        compiled = measure(case, precision, False, "sfr_on", batch_size, iters=iters, compiled=True)
    finally:
        case.forward_net = case.network
    rel = abs(compiled_loss - reference) / abs(reference)
    rounding = abs(reference - exact) / abs(exact)  # what bf16 autocast itself moves the loss by
    speedup = round(eager["ms"] / compiled["ms"], 2) if eager["ms"] and compiled["ms"] else None
    return {"model": case.spec.name, "batch": batch_size, "precision": precision, "eager_ms": eager["ms"],
            "compiled_ms": compiled["ms"], "speedup": speedup,
            "compile_first_forward_s": round(first_forward_s, 1), "loss_eager": reference,
            "loss_compiled": compiled_loss, "loss_rel_diff": rel, "bf16_rounding_rel": rounding,
            "fp32_rel_diff": abs(compiled_exact - exact) / abs(exact),
            "same_loss_bf16": rel <= 2 * rounding + 1e-3}
