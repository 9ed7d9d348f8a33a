"""Fast-NTK unlearning: scrub a classifier with the linearised (NTK) difference of training on D and on D_r.

Golatkar, Achille, Soatto, "Forgetting Outside the Box" (ECCV 2020) and Li, Hsu, Chen, Marculescu, "Fast-NTK:
Parameter-Efficient Unlearning for Large-Scale Models" (arXiv 2312.14923). Only a subset S of the parameters is
linearised (the linear head, BatchNorm affine parameters, prompts or LoRA weights), which keeps the system small.

With D = retain + forget (so N_D = N_r + N_f) and ridge lambda = N * weight_decay per set (mean-loss convention),
    w_new = w(D) + s * (w_lin(D_r) - w_lin(D)),    w_lin(X) = w0 - (G_X^T G_X + lambda_X I)^-1 G_X^T r_X.
The statistics A = G_D^T G_D and b = G_D^T r_D of the full set are cached (memory and disk); a later request on
the same model and the same D, however it is split, computes only the forget rows and downdates
A_r = A_D - G_f^T G_f, b_r = b_D - G_f^T r_f. The default linearisation point is init="zeros" (the head at 0,
where it predicts uniformly; other subset weights as trained); init="current" (or None) linearises at the trained
weights, which barely moves a trained head (forget accuracy stays at 1.0 on the digits classifiers). For a linear
head with squared loss and init="zeros" the scrub is exact: a ridge head on D becomes the ridge head on D_r. For
cross-entropy the step's metric on the logits is the CE Hessian at uniform predictions by default
(`curvature="uniform"`, see `diffunlearn.ntk.rows`), exact at init="zeros".
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from time import perf_counter

import torch
from torch import nn

from ..data.batches import LabeledBatches, check_input_shapes
from ..data.digest import multiset_digest
from ..errors import UserError, choice_error
from .cache import disk_limit, load_statistics, statistics_key, store_statistics
from .rows import CURVATURES, LOSSES, HeadRows, JacobianRows, model_logits
from .solve import ridge_dual, ridge_primal
from .statistics import accumulate, collect
from .subset import init_label, resolve_init, select_subset

FORMS = ("auto", "primal", "dual")
PRECISIONS = ("float64", "float32")


@dataclass
class FastNTKResult:
    """The unlearned copy of the model and what it took.

    Attributes:
        model: the scrubbed deep copy (the input model is never modified).
        info: init ('zeros'/'current'/'given'), form ('primal'/'dual'), cache ('memory'/'disk'/'miss'/'off'/
            'unused (dual form)'), jacobian_samples (samples whose features / Jacobians were computed in this
            call), num_params, lambdas, jitter, scale, fisher_noise, delta_norm, seconds {digest, forget_rows,
            retain_rows, solve, total}.
    """

    model: nn.Module
    info: dict = field(default_factory=dict)


def _check_options(model, loss, weight_decay, batch_size, chunk_size, form, fisher_noise, fisher_cap, cache,
                   curvature, precision) -> None:
    if not isinstance(model, nn.Module):
        raise UserError(f"model of type {type(model).__name__} is not a torch.nn.Module classifier")
    if loss not in LOSSES:
        raise choice_error("loss", loss, LOSSES)
    if form not in FORMS:
        raise choice_error("form", form, FORMS)
    if curvature not in CURVATURES:
        raise choice_error("curvature", curvature, CURVATURES)
    if precision not in PRECISIONS:
        raise choice_error("precision", precision, PRECISIONS)
    for name, value, low in (("weight_decay", weight_decay, 0), ("fisher_noise", fisher_noise, 0),
                             ("fisher_cap", fisher_cap, None)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < (low or 0) or \
                (low is None and value == 0):
            raise UserError(f"{name} {value!r} is invalid; give a finite number {'>= 0' if low == 0 else '> 0'}")
    if not isinstance(cache, (bool, str)) or cache == "":
        raise UserError(f"cache {cache!r} is invalid; give True, False or a non-empty name for the full set D")
    if cache:
        disk_limit()  # a bad DIFFUNLEARN_NTK_CACHE_BYTES is refused before anything runs
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
        if not (value is None and name == "chunk_size") and (not isinstance(value, int) or value < 1):
            raise UserError(f"{name} {value!r} is invalid; give a positive integer"
                            + (" or None" if name == "chunk_size" else ""))


def _probe(model, sets) -> int:
    """Run one sample through the model; returns the number of logits C."""
    for batches in sets:
        if len(batches):
            images, _ = next(iter(batches))
            first = next(model.parameters())
            try:
                with torch.no_grad():
                    logits = model_logits(model(images[:1].to(first.device, first.dtype)))
            except (RuntimeError, ValueError) as exc:
                raise UserError(f"the model cannot take {batches.name} images of shape {tuple(images.shape[1:])}: "
                                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                                ) from None
            if logits.ndim != 2:
                raise UserError(f"the model returns outputs of shape {tuple(logits.shape)}; expected logits (B, C)")
            return logits.shape[-1]
    raise UserError("the forget and retain sets are both empty")


def _trapezium_scale(delta: torch.Tensor, error: torch.Tensor) -> tuple[float, bool]:
    """s = 1 + 2 |cos(d, e)| |e| / |d| (reference code's 'trapezium'); 1 when |d| ~ 0. Returns (s, clamped)."""
    d_norm, e_norm = float(delta.norm()), float(error.norm())
    if d_norm <= 1e-12 * max(1.0, e_norm) or e_norm == 0.0:
        return 1.0, True
    return 1.0 + 2.0 * abs(float((delta * error).sum())) / d_norm ** 2, False


def fast_ntk_scrub(model: nn.Module, forget, retain, subset: str = "head", loss: str = "ce",
                   weight_decay: float = 5e-4, init="zeros", scale: bool = False, fisher_noise: float = 0.0,
                   batch_size: int = 256, chunk_size=None, cache=True, form: str = "auto",
                   fisher_cap: float = 1e3, seed: int = 0, curvature: str = "uniform",
                   precision: str = "float64") -> FastNTKResult:
    """Fast-NTK unlearning with details; `fast_ntk_unlearn` returns only the model.

    Args:
        model: a classifier returning logits (B, C), or an object with `.logits` (transformers).
        forget, retain: D_f and D_r, each an (images (N, ...), labels (N,)) pair, a LabeledImages, a Dataset of
            (image, label) / {"pixel_values", "labels"} items, or a DataLoader (no random augmentation).
        subset: "head" (exact, no autograd), "bn", a regex / glob over parameter names, or several joined by "+".
        loss: "ce" (residual softmax - onehot) or "mse" (residual f - onehot).
        weight_decay: wd of the fine-tune; lambda = N * wd for a set of N samples.
        init: w0, the subset's weights before the fine-tune. "zeros" (the default, the classifier benchmark's
            setting): the head's weights at 0, the centre of the fine-tune's weight decay, where the head predicts
            uniformly (so curvature="uniform" is exact), and the subset's other weights (BN, prompts, LoRA) at
            their current values, where their rows vanish (a zero head hides them: only the head moves); a
            subset without the head is linearised at its current weights. "current" or None: the current
            weights (the reference code's approximation; on the embedded digits classifiers it leaves forget
            accuracy at 1.0). Or {name: tensor} for any other point. Recorded in info["init"] ('zeros',
            'current' or 'given').
        scale: apply the trapezium scale s instead of s = 1.
        fisher_noise: alpha of the Fisher noise added after scrubbing (0 = off; ~1e-9 in the reference).
        batch_size: samples per mini-batch; chunk_size: vmap chunk over samples for Jacobians (None = whole batch).
        cache: reuse / store the statistics of D = retain + forget (primal form only; in memory the 4 most recent
            sets, 2 GiB in all, and on disk under DIFFUNLEARN_CACHE, P_S^2 float64 each, the least recently used
            trimmed beyond 8 GiB or env DIFFUNLEARN_NTK_CACHE_BYTES): True identifies D by a SHA-256 digest of its
            samples (`diffunlearn.data.digest`: order-free, split-free); a string names D instead (no hashing; you
            vouch that the name always means the same samples); False recomputes everything.
        form: "auto" (primal when P_S <= rows of D, else dual), "primal" or "dual".
        fisher_cap: cap on 1 / F in the noise variance; seed: seed of the noise.
        curvature: output metric of the cross-entropy Gauss-Newton step (see `diffunlearn.ntk.rows`): "uniform"
            (the CE Hessian at uniform predictions, exact for init="zeros") or "identity" (the reference code's).
            Ignored for loss="mse".
        precision: "float64" (rows and their products in float64) or "float32" (float32 rows and products X^T X,
            X^T R, accumulated and solved in float64: about 3x faster for large sets, error in the benchmark).

    Raises:
        UserError: bad options, unsupported data, wrong image shapes, out-of-range labels, a subset that matches
            no parameter, or a model without a recognisable head for subset "head".
    """
    start = perf_counter()
    _check_options(model, loss, weight_decay, batch_size, chunk_size, form, fisher_noise, fisher_cap, cache,
                   curvature, precision)
    work = copy.deepcopy(model)
    was_training = work.training
    work.eval()  # BatchNorm must use running statistics under vmap, and features must be deterministic
    forget_set, retain_set = LabeledBatches(forget, batch_size, "forget"), LabeledBatches(retain, batch_size, "retain")
    check_input_shapes(work, forget_set, retain_set)
    chosen = select_subset(work, subset)
    w0 = resolve_init(init, work, chosen)
    num_classes = _probe(work, (forget_set, retain_set))
    rows = (HeadRows(work, chosen.head, w0, num_classes, loss, curvature, precision) if chosen.head is not None
            else JacobianRows(work, chosen.names, w0, num_classes, loss, chunk_size, curvature, precision))
    rows.with_fisher = fisher_noise > 0  # the Fisher is only needed for the noise
    n_forget, n_retain = len(forget_set), len(retain_set)
    use = form if form != "auto" else ("primal" if rows.num_params <= (n_forget + n_retain) * rows.rows_per_sample
                                       else "dual")
    lam_full, lam_retain = (n_forget + n_retain) * weight_decay, n_retain * weight_decay
    seconds = {"digest": 0.0}

    tic = perf_counter()
    if use == "primal":
        key, source, full = None, "off", None
        if cache:
            data_id = (multiset_digest(retain_set, forget_set) if cache is True
                       else f"named:{cache}:{n_forget + n_retain}")
            tag = (loss if loss == "mse" else f"ce/{curvature}") + ("" if precision == "float64" else f"/{precision}")
            key = statistics_key(work, chosen.names, w0, tag, data_id)
            full, source = load_statistics(key, rows.device)
            if full is not None and rows.with_fisher and full.fisher is None:  # cached without the Fisher
                full, source = None, "miss"
            seconds["digest"] = perf_counter() - tic
        tic = perf_counter()
        forget_stats = accumulate(rows, forget_set)
        seconds["forget_rows"], tic = perf_counter() - tic, perf_counter()
        if full is None:
            retain_stats = accumulate(rows, retain_set)
            full = retain_stats + forget_stats
            if key is not None:
                store_statistics(key, full)
        else:
            retain_stats = full - forget_stats  # the downdate
        seconds["retain_rows"], tic = perf_counter() - tic, perf_counter()
        if lam_full not in full.solved:  # the solution on D is the same for every request on D
            full.solved[lam_full] = ridge_primal(full.gram, full.rhs, lam_full, full.count)
        theta_full, jitter_full = full.solved[lam_full][0].to(rows.device), full.solved[lam_full][1]
        del forget_stats  # P_S x P_S matrices dominate the memory of this call
        theta_retain, jitter_retain = ridge_primal(retain_stats.gram, retain_stats.rhs, lam_retain, n_retain,
                                                   overwrite=retain_stats is not full)  # a fresh downdate / sum
        fisher_retain = retain_stats.fisher
    else:
        source = "unused (dual form)" if cache else "off"
        design_f, target_f, _, _ = collect(rows, forget_set)
        seconds["forget_rows"], tic = perf_counter() - tic, perf_counter()
        design_r, target_r, fisher_retain, _ = collect(rows, retain_set)
        seconds["retain_rows"], tic = perf_counter() - tic, perf_counter()
        theta_full, jitter_full = ridge_dual(torch.cat([design_r, design_f]), torch.cat([target_r, target_f]),
                                             lam_full)
        theta_retain, jitter_retain = ridge_dual(design_r, target_r, lam_retain)

    delta = theta_full - theta_retain  # w_lin(D_r) - w_lin(D), in the rows' (P, k) layout
    params = dict(work.named_parameters())
    current = rows.flatten({n: params[n] for n in chosen.names})
    linear_w0 = current if w0 is None else rows.flatten(w0)
    s, clamped = _trapezium_scale(delta, current - (linear_w0 - theta_retain)) if scale else (1.0, False)
    new = current + s * delta
    noise_std_mean = 0.0
    if fisher_noise > 0:
        fisher = (fisher_retain / max(n_retain, 1)).clamp(min=0)  # rounding can leave tiny negatives
        std = (fisher_noise * (1.0 / (fisher + 1e-8)).clamp(max=fisher_cap)).sqrt()
        generator = torch.Generator().manual_seed(seed)
        new = new + std * torch.randn(std.shape, generator=generator, dtype=torch.float64).to(std.device)
        noise_std_mean = float(std.mean())
    with torch.no_grad():
        for name, value in rows.unflatten(new).items():
            params[name].copy_(value.to(params[name].dtype))
    work.train(was_training)
    seconds["solve"] = perf_counter() - tic
    seconds["total"] = perf_counter() - start
    info = {"subset": chosen.spec, "subset_params": chosen.names, "num_params": rows.num_params, "form": use,
            "loss": loss, "curvature": curvature if loss == "ce" else "identity", "precision": precision,
            "init": init_label(init, w0),
            "cache": source, "jacobian_samples": rows.samples_computed, "num_forget": n_forget,
            "num_retain": n_retain, "lambda_full": lam_full, "lambda_retain": lam_retain,
            "jitter": max(jitter_full, jitter_retain), "scale": s, "scale_clamped": clamped,
            "fisher_noise": fisher_noise, "noise_std_mean": noise_std_mean, "delta_norm": float(delta.norm()),
            "seconds": seconds}
    return FastNTKResult(work, info)


def fast_ntk_unlearn(model: nn.Module, forget, retain, subset: str = "head", loss: str = "ce",
                     weight_decay: float = 5e-4, init="zeros", scale: bool = False, fisher_noise: float = 0.0,
                     batch_size: int = 256, chunk_size=None, cache=True, form: str = "auto",
                     fisher_cap: float = 1e3, seed: int = 0, curvature: str = "uniform",
                     precision: str = "float64") -> nn.Module:
    """The unlearned deep copy of `model`; `fast_ntk_scrub` documents the arguments and returns the details."""
    return fast_ntk_scrub(model, forget, retain, subset=subset, loss=loss, weight_decay=weight_decay, init=init,
                          scale=scale, fisher_noise=fisher_noise, batch_size=batch_size, chunk_size=chunk_size,
                          cache=cache, form=form, fisher_cap=fisher_cap, seed=seed, curvature=curvature,
                          precision=precision).model


__all__ = ["FastNTKResult", "fast_ntk_scrub", "fast_ntk_unlearn"]
