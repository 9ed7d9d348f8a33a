"""Markdown tables of a GPU benchmark result (see `bench.run`)."""

from __future__ import annotations

from ...outputs import markdown_table


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def table(rows: list, columns: list) -> list:
    """Markdown lines; `columns` are (header, key or function of the row)."""
    return markdown_table([h for h, _ in columns],
                          [[_fmt(key(r) if callable(key) else r.get(key)) for _, key in columns] for r in rows])


def step_pairs(rows: list) -> list:
    """One row per (model, precision, checkpointing, cached latents, batch): SFR-on and fine-tuning side by side,
    and their ratio."""
    merged = {}
    for r in rows:
        cached = bool(r.get("cached_latents"))
        key = (r["model"], r["precision"], r["grad_ckpt"], cached, r["batch"])
        entry = merged.setdefault(key, {"model": r["model"], "precision": r["precision"],
                                        "grad_ckpt": "on" if r["grad_ckpt"] else "off",
                                        "cached_latents": "yes" if cached else "no", "batch": r["batch"]})
        entry[f"{r['kind']}_ms"], entry[f"{r['kind']}_GiB"] = r["ms"], r["peak_GiB"]
        entry.setdefault("vae_encode_ms", r.get("vae_encode_ms"))
    for entry in merged.values():
        a, b = entry.get("sfr_on_ms"), entry.get("ft_ms")
        entry["ratio"] = round(a / b, 2) if a and b else None
    return list(merged.values())


def fit_rows(result: dict) -> list:
    """The fit section with the memory line and each card's cell (see `fit.card_cell`)."""
    from .fit import CARDS_GB, card_cell, memory_line

    total = result.get("gpu_total_bytes") or 0
    rows = []
    for r in result["rows"]["fit"]:
        row = dict(r)
        if r.get("peaks"):
            floor, a, s = memory_line(r["peaks"])
            row.update(floor_GiB=floor, per_sample_GiB=s)
            capped = r["largest_here"] >= r.get("cap", 10 ** 9)
            for card, capacity in CARDS_GB.items():
                ran_here = total and abs(total - capacity) < 0.1 * capacity
                row[card] = card_cell(r["peaks"], capacity, r["largest_here"] if ran_here else None, capped)
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    rows = result["rows"]
    out = [f"Device: {result['device']}; torch {result['torch']}; bf16 8192^3 matmul measured: "
           f"{_fmt(result.get('matmul_bf16_TFLOPs'))} TFLOP/s", ""]
    if result.get("params_M"):
        out += ["Parameters (M): " + ", ".join(f"{k} {v}" for k, v in result["params_M"].items()), ""]
    if rows["steps"]:
        out += ["Step time (all weights trainable; SFR-on iteration = forget + remain step; FT = one plain step):",
                ""] + table(step_pairs(rows["steps"]), [
                    ("model", "model"), ("precision", "precision"), ("grad ckpt", "grad_ckpt"),
                    ("cached latents", "cached_latents"), ("batch", "batch"), ("SFR-on ms", "sfr_on_ms"),
                    ("FT ms", "ft_ms"), ("SFR-on / FT", "ratio"),
                    ("SFR-on peak GiB", "sfr_on_GiB"), ("FT peak GiB", "ft_GiB"),
                    ("VAE encode ms per step", "vae_encode_ms")]) + [""]
    if rows["fit"]:
        out += ["Largest SFR-on batch (bf16 autocast, gradient checkpointing on; peak memory at batches 1 and 4, "
                "then one run at the batch predicted for this card, capped; see fit.py for the memory model):",
                ""] + table(fit_rows(result), [
                    ("model", "model"), ("subset", "subset"), ("trainable M", "trainable_M"),
                    ("peak GiB at batch", lambda r: ", ".join(
                        f"{b}: {m}" for b, m in sorted(r.get("peaks", {}).items(), key=lambda x: int(x[0])))),
                    ("per sample GiB", "per_sample_GiB"), ("largest ran here", "largest_here"),
                    ("its ms", "checked_ms"), ("24 GB card", "24 GB"), ("80 GB card", "80 GB")]) + [""]
    if rows["compute"]:
        out += ["Compute utilisation:", ""] + table(rows["compute"], [
            ("model", "model"), ("step", "kind"), ("batch", "batch"), ("ms", "ms"),
            ("TFLOP counted", "counted_TFLOP"), ("of which VAE encode", "vae_encode_TFLOP"),
            ("TFLOP analytic (DiT only)", "analytic_TFLOP"),
            ("TFLOP/s", "achieved_TFLOPs"), ("share of datasheet bf16", "share_of_datasheet"),
            ("share of measured matmul", "share_of_measured")]) + [""]
    if rows["compile"]:
        out += ["torch.compile (SFR-on iteration, bf16, checkpointing off):", ""] + table(rows["compile"], [
            ("model", "model"), ("batch", "batch"), ("eager ms", "eager_ms"), ("compiled ms", "compiled_ms"),
            ("speed-up", "speedup"), ("first compiled forward s", "compile_first_forward_s"),
            ("loss rel. diff bf16", "loss_rel_diff"), ("bf16 rounding", "bf16_rounding_rel"),
            ("rel. diff fp32", "fp32_rel_diff"), ("same loss", "same_loss_bf16")]) + [""]
    if rows["sampling"]:
        out += ["Sampling (stock pipeline, bf16 weights, classifier-free guidance, decode included):", ""] + table(
            rows["sampling"], [("model", "model"), ("pipeline", "pipeline"), ("px", "px"), ("batch", "batch"),
                               ("steps", "steps"), ("guidance", "guidance"), ("s", "seconds"),
                               ("images/s", "images_per_s")]) + [""]
    if rows["library"]:
        out += ["The library's path (Trainer + SFR-on from the real config; evaluation's model.sample):", ""] + table(
            rows["library"], [("model", "model"), ("batch", "batch"), ("cached latents", "cached_latents"),
                              ("mask batches", "mask_batches"),
                              ("mask pass s", "mask_pass_s"), ("cache hit s", "mask_hit_s"),
                              ("hit", "mask_cache_hit"), ("iteration ms", "iteration_ms"),
                              ("peak GiB", "peak_GiB"), ("eval dtype", "eval_dtype"),
                              ("eval images/s", "eval_images_per_s"), ("finite", "losses_finite")]) + [""]
    for kind in ("skipped", "errors"):
        if result.get(kind):
            out += [f"{kind}:"] + [f"- {x}" for x in result[kind]] + [""]
    return "\n".join(out)
