"""The largest training batch that fits: peak GPU memory of an SFR-on iteration at a few batch sizes, the batch
those allow under a card's memory, and one run at the batch predicted for the card at hand (stepping down on OOM).

Memory model: peak(b) = max(floor, a + s * b). The floor is the optimizer-step peak, which does not grow with the
batch (weights, gradients, optimizer states, saliency mask and the copy `Trainer.update` restores masked-out
elements from); a + s * b is the backward peak (the same plus activations). At small batches the floor dominates,
so the line is drawn through the two largest batches measured; where it is flat (s < MIN_SLOPE GiB per sample)
nothing is extrapolated and only what ran is reported.
"""

from __future__ import annotations

import math

import torch

from .steps import measure

USABLE = 0.92  # share of a card's memory the allocator can fill (context, fragmentation)
CARDS_GB = {"24 GB": 24e9, "80 GB": 80e9}
MIN_SLOPE = 0.01  # GiB per sample below which the line is not extrapolated


def memory_line(peaks: dict):
    """(floor, a, s) from {batch: peak GiB}; a and s are None when fewer than two batches ran or s < MIN_SLOPE."""
    points = sorted((int(b), float(m)) for b, m in peaks.items())
    floor = points[0][1]
    if len(points) < 2:
        return floor, None, None
    (b1, m1), (b2, m2) = points[-2:]
    slope = (m2 - m1) / (b2 - b1)
    if slope < MIN_SLOPE:
        return floor, None, None
    return floor, m2 - slope * b2, slope


def estimate(peaks: dict, capacity_bytes: float):
    """Largest batch predicted under `capacity_bytes`: 0 if even the floor does not fit, None if unknown."""
    usable = USABLE * capacity_bytes / 2 ** 30
    floor, a, s = memory_line(peaks)
    if floor > usable:
        return 0
    if s is None:
        return None
    return max(0, int((usable - a) / s))


def card_cell(peaks: dict, capacity_bytes: float, largest_ran: int = None, capped: bool = False) -> str:
    """Table cell for one card: 'no', 'batch ~N' (predicted), or what ran on a card of this size."""
    n = estimate(peaks, capacity_bytes)
    if n == 0:
        return "no"
    if largest_ran:  # measured on a card of this size
        text = f"batch {'>= ' if capped else ''}{largest_ran} (ran)"
        return text + (f", ~{n} predicted" if capped and n and n > largest_ran else "")
    if n is None:
        ran = max(int(b) for b in peaks)
        return f"batch >= {ran} (ran), no estimate (flat)"
    return f"batch ~{n}" if n else "no"


def fit_subset(case, subset: str, precision: str = "bf16", checkpointing: bool = True, probes=(1, 4),
               cap: int = 128) -> dict:
    """Peaks at `probes`, then one run at the batch predicted for this card (at most `cap`)."""
    row = {"model": case.spec.name, "subset": subset, "precision": precision, "grad_ckpt": checkpointing,
           "peaks": {}, "cap": cap}
    for b in probes:
        r = measure(case, precision, checkpointing, "sfr_on", b, subset, warmup=1, iters=1)
        row["trainable_M"] = r["trainable_M"]
        if r["peak_GiB"] is None:  # a CPU: the iteration ran, there is no GPU memory to fit
            return {**row, "largest_here": "n/a (CPU)"}
        if r["peak_GiB"] == "OOM":
            row["oom_at"] = b
            break
        row["peaks"][b] = r["peak_GiB"]
    if not row["peaks"]:
        return {**row, "largest_here": 0}
    here = torch.cuda.get_device_properties(case.device).total_memory
    guess = estimate(row["peaks"], here)
    guess = cap if guess is None else min(guess, cap)
    largest = max(row["peaks"])
    for _ in range(3):  # run it on this card; step down by 10% on OOM
        if guess <= largest:
            break
        r = measure(case, precision, checkpointing, "sfr_on", guess, subset, warmup=0, iters=1)
        if r["peak_GiB"] != "OOM":
            row["peaks"][guess], row["checked_ms"], largest = r["peak_GiB"], r["ms"], guess
            break
        row["oom_at"] = guess
        guess = max(largest, math.floor(guess * 0.9))
    floor, _, _ = memory_line(row["peaks"])
    if largest >= 4 * max(probes) and row["peaks"][largest] > floor + 0.5:  # the probes sat on the floor: one
        half = largest // 2  # more point above it, so the line is drawn through activation-bound batches
        r = measure(case, precision, checkpointing, "sfr_on", half, subset, warmup=0, iters=1)
        if r["peak_GiB"] != "OOM":
            row["peaks"][half] = r["peak_GiB"]
    row["largest_here"] = largest
    return row
