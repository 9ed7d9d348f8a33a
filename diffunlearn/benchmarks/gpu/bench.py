"""The GPU benchmark's sections, run family by family inside a wall-clock budget, every row written as it lands.

Sections: step times (all weights; fp32 and bf16 autocast, gradient checkpointing off and on; SFR-on iteration and
plain fine-tuning step), the largest batch per trainable subset, sampling throughput, DiT's compute utilisation
and `torch.compile`, the library's own path (DiT and SD v1.4, on a copy of the network). See PASSES for the order.
"""

from __future__ import annotations

import gc
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from ...outputs import write_json
from .cases import Case
from .compute import compile_row, matmul_tflops, utilisation
from .fit import fit_subset
from .sampling import sampling_throughput
from .specs import get_spec
from .steps import KINDS, measure

SECTIONS = ("steps", "compute", "compile", "sampling", "library", "fit")


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class Bench:
    """Collects rows per section, skips what the remaining budget cannot hold, saves after every row."""

    def __init__(self, device, tiny: bool, budget_s: float, json_path=None, log=print):
        self.device, self.tiny, self.log = torch.device(device), tiny, log
        self.deadline = time.monotonic() + budget_s
        self.json_path = Path(json_path) if json_path else None
        self.result = {"device": device_name(self.device), "torch": torch.__version__, "tiny": tiny,
                       "rows": {s: [] for s in SECTIONS}, "skipped": [], "errors": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, section: str, row: dict) -> None:
        self.result["rows"][section].append(row)
        self.log(f"[{section}] {json.dumps(row)}")
        self.save()

    def save(self) -> None:
        if self.json_path:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.json_path, self.result)

    def guarded(self, section: str, what: str, need_s: float, fn):
        """Run fn() if `need_s` seconds are left; a failure is recorded (not raised) so later sections still run."""
        if self.left() < need_s:
            self.result["skipped"].append(f"{what}: {self.left():.0f} s left, needs ~{need_s:.0f} s")
            self.log(f"[skip] {what}")
            self.save()
            return None
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a benchmark reports every failure and goes on
            self.result["errors"].append(f"{what}: {type(exc).__name__}: {exc}"[:2000])
            self.log(f"[error] {what}: {type(exc).__name__}: {exc}")
            self.save()
            return None


# compile: DiT-XL/2 forward + backward at batch 64 took over 100 s to compile on an H100 machine (16 cores)
# what each pass runs, in order: the figures every family needs first, fp32 next, the extras last; a pass builds
# fresh models (the fit section leaves LoRA adapters in its network)
PASSES = ((("steps:bf16", "sampling", "fit"), ("dit", "sd", "sdxl", "sd3")),
          (("steps:fp32",), ("dit", "sd", "sdxl", "sd3")),
          (("compute", "library"), ("dit", "sd")),
          (("compile",), ("dit",)))
FIT_CAP = {"dit": 128, "sd": 64, "sdxl": 16, "sd3": 16}  # largest batch tried on the card (1024 px VAE encodes)
NEEDS = {"steps": 25, "compute": 10, "compile": 240, "sampling": 15, "library": 45, "fit": 40}


def run_section(bench, case, section: str, iters: int, steps: dict, checkpointing=(False, True),
                library_models=("dit", "sd")) -> None:
    spec, tiny = case.spec, bench.tiny
    scale = 0.0 if tiny else 1.0
    name, _, precision = section.partition(":")
    need = NEEDS[name] * scale
    if name == "steps":  # checkpointing off and on; off also with cached latents (no VAE encode in the step)
        for ckpt, cached in [c for c in ((False, False), (False, True), (True, False)) if c[0] in checkpointing]:
            for kind in KINDS:
                row = bench.guarded(name, f"{spec.key} {precision} ckpt={ckpt} cached={cached} {kind}", need,
                                    lambda: measure(case, precision, ckpt, kind, spec.batch, iters=iters,
                                                    budget_s=12.0, cached_latents=cached))
                if row:
                    steps[(precision, ckpt, kind, cached)] = row
                    bench.add(name, row)
    elif name == "compute" and spec.key == "dit":
        peak = bench.result.get("matmul_bf16_TFLOPs")
        for kind in KINDS:
            row = steps.get(("bf16", False, kind, False))
            if row and row["ms"]:
                out = bench.guarded(name, f"{spec.key} flops {kind}", need,
                                    lambda: utilisation(case, row, bench.result["device"], peak))
                if out:
                    bench.add(name, out)
    elif name == "compile" and spec.key == "dit":
        out = bench.guarded(name, f"{spec.key} compile", need, lambda: compile_row(case, spec.batch, iters=iters))
        if out:
            bench.add(name, out)
    elif name == "sampling":
        out = bench.guarded(name, f"{spec.key} sampling", need, lambda: sampling_throughput(case))
        if out:
            bench.add(name, out)
    elif name == "library" and spec.key in library_models:
        from .library import library_run

        small = ["train.batch_size=2", "method.mask_batches=2", "eval.batch_size=2"] if tiny else []
        for cached in (False, True):  # `train.cache_latents`: each D_f / D_r image encoded once (steady state)
            overrides = [*small, f"train.cache_latents={str(cached).lower()}"]
            out = bench.guarded(name, f"{spec.key} library cached={cached}", need, lambda: library_run(
                case, tiny, overrides, iters=iters, sample_batch=None if tiny else 8,
                sample_steps=2 if tiny else None))
            if out:
                bench.add(name, out)
    elif name == "fit":
        for subset in spec.subsets:
            out = bench.guarded(name, f"{spec.key} fit {subset}", need, lambda: fit_subset(
                case, subset, probes=(1, 2) if tiny else (1, 4), cap=FIT_CAP[spec.key]))
            if out:
                bench.add(name, out)


def run(families=("dit", "sd", "sdxl", "sd3"), sections=SECTIONS, tiny: bool = False, device=None,
        budget_s: float = 480.0, json_path=None, iters: int = 3, log=print, precisions=("fp32", "bf16"),
        batches=None, checkpointing=(False, True), library_models=("dit", "sd")) -> dict:
    """The PASSES over `families` and `sections`; returns the result dict (also written to `json_path` as it
    grows). Sections whose estimated time no longer fits the budget are skipped and listed."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bench = Bench(device, tiny, budget_s, json_path, log)
    if device.type == "cuda":
        bench.result["matmul_bf16_TFLOPs"] = round(matmul_tflops(device), 1)
        bench.result["gpu_total_bytes"] = torch.cuda.get_device_properties(device).total_memory
    steps = {}
    for pass_sections, pass_families in PASSES:
        wanted = [s for s in pass_sections if s.partition(":")[0] in sections
                  and (not s.startswith("steps:") or s.partition(":")[2] in precisions)]
        for family in [f for f in pass_families if f in families]:
            if not wanted:
                continue
            spec = get_spec(family, tiny)
            if family in (batches or {}):
                spec = replace(spec, batch=batches[family])
            case = bench.guarded("build", f"{family}: build", 0 if tiny else 10, lambda: Case(spec, device))
            if case is None:
                continue
            bench.result.setdefault("params_M", {})[spec.name] = round(case.num_parameters / 1e6, 1)
            for section in wanted:
                run_section(bench, case, section, iters, steps.setdefault(family, {}), checkpointing,
                            library_models)
            del case
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return bench.result
