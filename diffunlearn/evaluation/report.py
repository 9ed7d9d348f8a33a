"""Evaluate base and unlearned models under one recorded protocol; write report, gallery and model card."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
import torchmetrics

from ..errors import UserError
from .gallery import write_gallery
from .metrics import FID, SEED_STRIDE, generate, inception_extractor


class Evaluator:
    """Samples, judges and scores models for one forget target under one protocol.

    Args:
        cfg: the run config (uses `forget`, `eval`).
        judge: a `judges.Judge` (labels, predict, feature_extractor, protocol).
        forget, retained: the evaluated `targets.Target`s.
        reference: FID reference images (N, C, H, W) in [0, 1] (real images, or base-model samples).
        reference_source: what the reference images are, for the protocol.
    """

    def __init__(self, cfg, judge, forget, retained, reference: torch.Tensor, reference_source: str, device="cpu"):
        self.cfg, self.eval_cfg, self.judge = cfg, cfg.eval, judge
        self.forget, self.retained = list(forget), list(retained)
        if self.eval_cfg.fid_features == "inception":
            extractor, extractor_name = inception_extractor(self.eval_cfg.inception_weights), "inception-v3-2048"
            extractor_hash = None
        else:
            if judge.feature_extractor is None:
                raise UserError(f"eval.judge={self.eval_cfg.judge} has no feature extractor for FID; set "
                                "eval.fid_features=inception with eval.inception_weights=PATH")
            extractor, extractor_name = judge.feature_extractor, f"{self.eval_cfg.judge}-judge-features"
            extractor_hash = judge.protocol().get("weights_sha256")
        self.fid = FID(extractor.to(device).eval(), reference, self.eval_cfg.batch_size)
        counts = [(t, self.eval_cfg.forget_samples) for t in self.forget]
        counts += [(t, self.eval_cfg.retained_samples_per_class) for t in self.retained]
        self.rows = [(t, j) for t, n in counts for j in range(n)]
        self.conditions = torch.stack([t.condition for t, _ in self.rows])
        self.seeds = [self.eval_cfg.seed + SEED_STRIDE * t.seed_key + j for t, j in self.rows]
        self.expected = torch.tensor([t.label for t, _ in self.rows])
        self.num_forget = len(self.forget) * self.eval_cfg.forget_samples
        concept = self.cfg.forget.is_concept
        self.protocol = {
            "judge": judge.protocol(),
            "recognised_means": "judge label == the label the condition asks for (the forgotten concept for "
                                "forget prompts); a judge's 'none' output never counts",
            "fid_features": extractor_name, "fid_extractor_sha256": extractor_hash,
            "inception_weights": self.eval_cfg.inception_weights, "feature_dim": int(extractor.num_features),
            "fid_real_images": len(reference), "fid_real_source": reference_source,
            "fid_generated_images": len(self.rows) - self.num_forget,
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
        """All evaluation images of `model` (forget targets first), (N, C, H, W) in [0, 1]."""
        return generate(model, self.conditions, self.seeds, self.eval_cfg)

    def __call__(self, model) -> tuple:
        """Metrics of `model` and its images per target {key: (n, C, H, W)}."""
        images = self.images(model)
        recognised = (self.judge.predict(images) == self.expected).float()
        keys = [t.key for t, _ in self.rows]
        per_target = {t.key: recognised[[k == t.key for k in keys]].mean().item()
                      for t in self.forget + self.retained}
        metrics = {
            "forget_accuracy": recognised[:self.num_forget].mean().item(),
            "retained_accuracy": sum(per_target[t.key] for t in self.retained) / len(self.retained),
            "fid_retained": self.fid(images[self.num_forget:]),
            "per_target_accuracy": per_target,
        }
        per_key = {t.key: images[[k == t.key for k in keys]] for t in self.forget + self.retained}
        return metrics, per_key

    def gallery(self, folder, base_images: dict, unlearned_images: dict) -> None:
        k = self.eval_cfg.gallery_per_class
        order = self.forget + self.retained
        rows = [(t.key, t.name, t.forget) for t in order]
        seeds = {t.key: [self.eval_cfg.seed + SEED_STRIDE * t.seed_key + j for j in range(k)] for t in order}
        write_gallery(folder, rows, {t.key: base_images[t.key][:k] for t in order},
                      {t.key: unlearned_images[t.key][:k] for t in order}, seeds)


def write_model_card(path, cfg, base_path: str, report: dict, load_hint: str) -> None:
    """A Hugging Face model card (`README.md` with YAML front matter) for the unlearned pipeline."""
    base, unl = report.get("base"), report.get("unlearned")
    what = "prompt(s)" if cfg.forget.is_concept else "class(es)"
    forgotten = ", ".join(str(c) for c in (cfg.forget.prompts or cfg.forget.classes))
    lines = ["---", "library_name: diffusers", f"base_model: {json.dumps(base_path)}",
             f"tags: [diffunlearn, machine-unlearning, {cfg.method.name}]", "---", "",
             f"# {cfg.model.family} with {what} {forgotten} unlearned ({cfg.method.name})", "",
             f"- Base model: `{base_path}`",
             f"- Method: `{cfg.method.name}`, {cfg.train.steps} steps, optimizer {cfg.train.optimizer} "
             f"lr {cfg.train.lr}, seed {cfg.seed}",
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
    lines += [f"Load it with {load_hint}.", ""]
    Path(path).write_text("\n".join(lines))
