"""Evaluate base and unlearned models under one recorded protocol; write report, gallery and model card."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Optional

import torch
import torchmetrics
from accelerate.utils import gather_object

from ..errors import UserError
from .gallery import write_gallery
from .metrics import (FID, check_inception_weights, generate, image_seed, inception_extractor, process_share,
                      sample_seeds, sum_over_processes)


def check_evaluation(eval_cfg, judge, retained) -> None:
    """What an evaluation needs, checked by `unlearn` before any training and again by the Evaluator: FID features
    (the Inception weights file, or a judge that has a feature extractor) and at least 2 retained images (FID needs
    a covariance)."""
    if eval_cfg.fid_features == "inception":
        check_inception_weights(eval_cfg.inception_weights)
    elif judge.feature_extractor is None:
        raise UserError(f"eval.judge={eval_cfg.judge} has no feature extractor for FID; set "
                        "eval.fid_features=inception with eval.inception_weights=PATH")
    total = len(retained) * eval_cfg.retained_samples_per_class
    if total < 2:
        raise UserError(f"eval.retained_samples_per_class={eval_cfg.retained_samples_per_class} gives {total} "
                        f"retained image in all for {len(retained)} retained target(s); FID needs at least 2")


class Evaluator:
    """Samples, judges and scores models for one forget target under one protocol.

    In a distributed run every process builds it and calls it: each process generates and judges its share of
    the images (`metrics.process_share`; the per-image seeds do not change), and the reported numbers are sums
    over processes (judge counts, FID sums), so they are those of the 1-process run.

    Args:
        cfg: the run config (uses `forget`, `eval`).
        judge: a `judges.Judge` (labels, predict, feature_extractor, protocol).
        forget, retained: the evaluated `targets.Target`s.
        reference: FID reference images (N, C, H, W) in [0, 1] (real images, or base-model samples): this
            process's share of them (all of them in one process).
        reference_source: what the reference images are, for the protocol.
        forget_reference: this process's share of reference images of the forget targets (same source): the
            second, judge-independent signal `fid_forget` (distance of the forget samples to the forgotten target)
            is computed when given.
    """

    def __init__(self, cfg, judge, forget, retained, reference: torch.Tensor, reference_source: str, device="cpu",
                 forget_reference: Optional[torch.Tensor] = None):
        self.cfg, self.eval_cfg, self.judge = cfg, cfg.eval, judge
        self.forget, self.retained = list(forget), list(retained)
        check_evaluation(self.eval_cfg, judge, self.retained)
        if self.eval_cfg.fid_features == "inception":
            extractor, extractor_name = inception_extractor(self.eval_cfg.inception_weights), "inception-v3-2048"
            extractor_hash = None
        else:
            extractor, extractor_name = judge.feature_extractor, f"{self.eval_cfg.judge}-judge-features"
            extractor_hash = judge.protocol().get("weights_sha256")
        self.fid = FID(extractor.to(device).eval(), reference, self.eval_cfg.batch_size)
        self.fid_forget = None if forget_reference is None else \
            FID(extractor, forget_reference, self.eval_cfg.batch_size)
        if self.fid_forget is not None and self.fid_forget.num_real < 2:  # FID needs a covariance
            self.fid_forget = None
        self.targets = self.forget + self.retained
        self.sizes = [self.eval_cfg.forget_samples] * len(self.forget)
        self.sizes += [self.eval_cfg.retained_samples_per_class] * len(self.retained)
        rows = [(i, j) for i, n in enumerate(self.sizes) for j in range(n)]  # (target index, image j): all processes
        self.rows = [rows[r] for r in process_share(len(rows))]  # this process's share
        self.conditions = torch.stack([self.targets[i].condition for i, _ in self.rows]) if self.rows \
            else torch.empty(0)
        self.seeds = [image_seed(self.eval_cfg.seed, self.targets[i].seed_key, j) for i, j in self.rows]
        self.expected = torch.tensor([self.targets[i].label for i, _ in self.rows], dtype=torch.long)
        self.target_index = torch.tensor([i for i, _ in self.rows], dtype=torch.long)
        self.num_forget = len(self.forget) * self.eval_cfg.forget_samples
        concept = self.cfg.forget.is_concept
        self.protocol = {
            "judge": judge.protocol(),
            "recognised_means": "judge label == the label the condition asks for (the forgotten concept for "
                                "forget prompts); a judge's 'none' output never counts",
            "fid_features": extractor_name, "fid_extractor_sha256": extractor_hash,
            "inception_weights": self.eval_cfg.inception_weights, "feature_dim": int(extractor.num_features),
            "fid_real_images": self.fid.num_real, "fid_real_source": reference_source,
            "fid_generated_images": len(rows) - self.num_forget,
            "fid_forget_real_images": self.fid_forget.num_real if self.fid_forget else None,
            "second_signal": "fid_forget: FID of the forget samples to reference images of the forgotten target "
                             "(same features and source as FID_retained); fid_forget_nearest_retained: the smallest "
                             "FID of one retained target's samples to that reference (how far another target is)",
            "forget_samples_per_target": self.eval_cfg.forget_samples,
            "retained_samples_per_target": self.eval_cfg.retained_samples_per_class,
            "sampler": self.eval_cfg.sampler, "num_inference_steps": self.eval_cfg.num_inference_steps,
            "guidance_scale": self.eval_cfg.guidance_scale, "guidance_convention": "uncond + s * (cond - uncond)",
            "eval_seed": self.eval_cfg.seed,
            "seed_rule": "image j of target k: eval_seed + 100000 * k + j, k = the class id"
                         + (" (prompts: crc32(prompt) % 10000)" if concept else ""),
            "forget_targets": [t.key for t in self.forget], "retained_targets": [t.key for t in self.retained],
            "torch": torch.__version__, "torchmetrics": torchmetrics.__version__, "python": platform.python_version(),
        }

    def images(self, model) -> torch.Tensor:
        """This process's share of the evaluation images of `model` (`self.rows`), (n, C, H, W) in [0, 1]."""
        return generate(model, self.conditions, self.seeds, self.eval_cfg)

    def __call__(self, model) -> tuple:
        """Metrics of `model` and its gallery images per target {key: (k, C, H, W)}, k = eval.gallery_per_class
        (the first k seeds); in a distributed run every process calls it and gets the same result."""
        images = self.images(model)
        probs = self.judge.probabilities(images)  # (n, L + 1), last column: none of the labels
        verdicts = probs.argmax(-1)
        recognised = (verdicts == self.expected).long()
        counts = torch.zeros(2, len(self.targets), dtype=torch.long)  # (recognised, generated) per target
        counts[0].index_add_(0, self.target_index, recognised)
        counts[1].index_add_(0, self.target_index, torch.ones_like(recognised))
        correct, total = sum_over_processes(counts).float()  # float32 c / n: bit-equal to the mean of 0/1 flags
        per_target = {t.key: (correct[i] / total[i]).item() for i, t in enumerate(self.targets)}
        nf = len(self.forget)
        is_forget = self.target_index < nf
        confidence = sum_over_processes(torch.stack([
            probs[is_forget].gather(1, self.expected[is_forget, None]).double().sum(),
            probs[is_forget, -1].double().sum()]))
        metrics = {
            "forget_accuracy": (correct[:nf].sum() / total[:nf].sum()).item(),
            "retained_accuracy": sum(per_target[t.key] for t in self.retained) / len(self.retained),
            "fid_retained": self.fid(images[~is_forget]),
            "per_target_accuracy": per_target,
            # the judge's mean probability that a forget sample shows the forgotten target, and that it shows none
            "forget_confidence": (confidence[0] / total[:nf].sum()).item(),
            "forget_none_probability": (confidence[1] / total[:nf].sum()).item(),
        }
        if self.fid_forget is not None and self.eval_cfg.forget_samples * nf >= 2:  # FID needs a covariance
            metrics["fid_forget"] = self.fid_forget(images[is_forget])
            if self.eval_cfg.retained_samples_per_class >= 2:
                metrics["fid_forget_nearest_retained"] = min(
                    self.fid_forget(images[self.target_index == i]) for i in range(nf, len(self.targets)))
        return metrics, self.gather_gallery(images)

    def gather_gallery(self, images: torch.Tensor) -> dict:
        """{target key: its first eval.gallery_per_class images (k, C, H, W)}, collected from every process's
        share `images` (n, C, H, W)."""
        k = self.eval_cfg.gallery_per_class
        # clone: send the image alone, not the whole batch it is a view of
        gathered = dict(gather_object([(row, image.clone()) for row, image in zip(self.rows, images) if row[1] < k]))
        return {t.key: torch.stack([gathered[i, j] for j in range(min(k, self.sizes[i]))])
                for i, t in enumerate(self.targets)}

    def gallery(self, folder, base_images: dict, unlearned_images: dict, head: str = "") -> None:
        """Write the gallery (main process only) from the gallery images two calls of this evaluator returned;
        `head`: HTML opening the page (headline numbers, protocol, plots)."""
        k = self.eval_cfg.gallery_per_class
        rows = [(t.key, t.name, t.forget) for t in self.targets]
        seeds = {t.key: sample_seeds(self.eval_cfg.seed, t.seed_key, k) for t in self.targets}
        write_gallery(folder, rows, {t.key: base_images[t.key][:k] for t in self.targets},
                      {t.key: unlearned_images[t.key][:k] for t in self.targets}, seeds, head)


JUDGE_MAJORITY = 0.5  # the judge says "present" when it recognises the target in more than this share of samples


def forgetting_signals(base: dict, unlearned: dict) -> dict:
    """Two reads of "is the target gone" and whether they agree.

    The judge's: the target is present when its forget accuracy is above `JUDGE_MAJORITY`. The distance's (judge
    verdict-independent): the forget samples' FID to reference images of the target (`fid_forget`) against a
    threshold set by the base model, the geometric mean of its own `fid_forget` (samples of the target) and of
    `fid_forget_nearest_retained` (samples of the closest other target): halfway on a log scale between "the
    target" and "another target". A judge that reads degenerate images as the target (stripes called "seven")
    disagrees with the distance, and so does a judge that misses a target the model still draws.
    """
    fa = unlearned["forget_accuracy"]
    out = {"judge": "present" if fa > JUDGE_MAJORITY else "forgotten", "forget_accuracy": fa,
           "forget_confidence": unlearned.get("forget_confidence"),
           "forget_none_probability": unlearned.get("forget_none_probability")}
    if not all(k in m for m in (base, unlearned) for k in ("fid_forget",)) or \
            "fid_forget_nearest_retained" not in base:
        return {**out, "distance": None, "agree": None}
    threshold = math.sqrt(max(base["fid_forget"], 1e-12) * base["fid_forget_nearest_retained"])
    distance = "forgotten" if unlearned["fid_forget"] > threshold else "present"
    return {**out, "distance": distance, "fid_forget": unlearned["fid_forget"], "fid_forget_base": base["fid_forget"],
            "fid_forget_base_nearest_retained": base["fid_forget_nearest_retained"], "fid_forget_threshold": threshold,
            "agree": distance == out["judge"]}


def signals_line(signals: dict) -> Optional[str]:
    """One sentence on the two signals, or None when there is no distance signal."""
    if signals.get("agree") is None:
        return None
    verdict = "agree" if signals["agree"] else "DISAGREE: look at the gallery before trusting FA"
    return (f"judge: target {signals['judge']} (FA {signals['forget_accuracy']:.3f}, mean confidence "
            f"{signals['forget_confidence']:.3f}); distance: target {signals['distance']} (FID to the target "
            f"{signals['fid_forget']:.2f}, base {signals['fid_forget_base']:.2f}, nearest other target "
            f"{signals['fid_forget_base_nearest_retained']:.2f}, threshold {signals['fid_forget_threshold']:.2f}); "
            f"signals {verdict}")


def stop_line(stop: Optional[dict], steps: int) -> str:
    """One sentence on how long the run trained and why."""
    if not stop:
        return f"ran all {steps} steps (no in-loop checks)"
    rule = stop["rule"]
    best = (f"; it ended on its best checked state, from step {stop['restored_best_from_step']} (forgotten, lowest "
            "retained estimate)") if stop.get("restored_best_from_step") else ""
    if stop["stopped_at_step"] is None:
        return (f"ran all {steps} steps: the in-loop checks never met the stop rule (forget estimate <= "
                f"{rule['forget_accuracy_max']} for {rule['patience']} checks)" + best)
    if stop["checks"][-1]["action"] != "stop":
        return (f"stopped at step {stop['stopped_at_step']} of {steps} after {rule['max_repair_checks']} repair "
                "checks in a row" + best)
    repair = f", {stop['repair_checks']} check(s) asked for repair steps" if stop["repair_checks"] else ""
    return (f"stopped at step {stop['stopped_at_step']} of {steps}: forget estimate <= {rule['forget_accuracy_max']}"
            f" for {rule['patience']} consecutive checks every {stop['check_every']} steps"
            + (f", retained FID estimate <= {rule['fid_ratio_max']} x base" if rule["fid_ratio_max"] else "")
            + repair)


def card_metadata(cfg, report: dict) -> dict:
    """The card's YAML front matter: library, `base_model` (only when the base is a Hub repository), tags, and the
    unlearned model's metrics as `model-index` results with the protocol in each metric's name."""
    from ..outputs import hub_id

    meta = {"library_name": "diffusers", "tags": ["diffunlearn", "machine-unlearning", cfg.method.name]}
    if hub_id(report.get("base_model")):
        meta["base_model"] = report["base_model"]
    unl, proto = report.get("unlearned"), report.get("protocol")
    if unl and proto:
        target = ", ".join(map(str, cfg.forget.prompts or cfg.forget.classes))
        how = (f"{proto['sampler']} {proto['num_inference_steps']} steps, guidance {proto['guidance_scale']}, "
               f"eval seed {proto['eval_seed']}")
        metrics = [{"type": "forget_accuracy", "value": round(unl["forget_accuracy"], 4),
                    "name": f"forget accuracy ({proto['forget_samples_per_target']} samples per forgotten target, "
                            f"{how}, judge {proto['judge'].get('kind')} {proto['judge'].get('source')})"},
                   {"type": "retained_accuracy", "value": round(unl["retained_accuracy"], 4),
                    "name": f"retained accuracy ({proto['retained_samples_per_target']} samples per retained "
                            f"target, {how})"},
                   {"type": "fid", "value": round(unl["fid_retained"], 4),
                    "name": f"FID of retained targets ({proto['fid_features']}, {proto['fid_real_images']} reference "
                            f"images: {proto['fid_real_source']})"}]
        meta["model-index"] = [{"name": f"{cfg.model.family}-{cfg.method.name}-unlearned", "results": [{
            "task": {"type": "text-to-image" if cfg.forget.is_concept else "unconditional-image-generation",
                     "name": "machine unlearning"},
            "dataset": {"name": f"forget: {target}", "type": "diffunlearn-forget-target"},
            "metrics": metrics}]}]
    return meta


def write_model_card(path, cfg, report: dict, load_hint: str) -> None:
    """A Hugging Face model card (`README.md` with YAML front matter) for the unlearned pipeline; `report` has no
    absolute paths (see `outputs.scrub`)."""
    import yaml

    base, unl = report.get("base"), report.get("unlearned")
    what = "prompt(s)" if cfg.forget.is_concept else "class(es)"
    forgotten = ", ".join(str(c) for c in (cfg.forget.prompts or cfg.forget.classes))
    lines = ["---", yaml.safe_dump(card_metadata(cfg, report), sort_keys=False, width=1000).strip(), "---", "",
             f"# {cfg.model.family} with {what} {forgotten} unlearned ({cfg.method.name})", "",
             f"- Base model: `{report.get('base_model')}`",
             f"- Method: `{cfg.method.name}`, optimizer {cfg.train.optimizer} lr {cfg.train.lr}, seed {cfg.seed}; "
             + stop_line(report.get("stop"), cfg.train.steps),
             f"- Forgotten {what}: {forgotten}"
             + (f" (mapped onto {', '.join(cfg.forget.anchors)})" if cfg.forget.is_concept else ""), ""]
    if base and unl:
        lines += ["| metric | base | unlearned |", "|---|---|---|"]
        for key in ("forget_accuracy", "retained_accuracy", "fid_retained"):
            lines.append(f"| {key} | {base[key]:.4f} | {unl[key]:.4f} |")
        proto = report["protocol"]
        lines += ["", f"Protocol: {proto['sampler']} {proto['num_inference_steps']} steps, guidance "
                      f"{proto['guidance_scale']}, FID on {proto['fid_features']} features "
                      f"(dim {proto['feature_dim']}), {proto['fid_real_images']} real vs "
                      f"{proto['fid_generated_images']} generated images; full protocol in `report.json`.", ""]
        signals = signals_line(report.get("signals") or {})
        lines += [f"Forgetting signals: {signals}.", ""] if signals else []
    checks = (report.get("stop") or {}).get("checks") or []
    if checks:
        lines += ["In-loop checks (step: forget estimate, retained FID estimate / base, next): "
                  + "; ".join(f"{c['step']}: {c['forget_accuracy']:.3f}, {c['fid_ratio']:.2f}, {c['action']}"
                              for c in checks) + ".", ""]
    lines += [f"Load it with {load_hint}.", ""]
    Path(path).write_text("\n".join(lines))
