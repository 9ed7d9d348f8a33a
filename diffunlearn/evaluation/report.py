"""Evaluate base and unlearned models under one recorded protocol; write report, gallery and model card."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
import torchmetrics

from ..assets import weights_sha256
from ..classifier import DigitsClassifier, PenultimateFeatures
from .gallery import write_gallery
from .metrics import FID, classify, forget_accuracy, generate, inception_extractor, labels_and_seeds
from .metrics import per_class_accuracy, retained_accuracy


class Evaluator:
    """Samples, classifies and scores models for one forget target under one protocol.

    Args:
        cfg: the run config (uses `forget`, `eval`, `seed`).
        classifier_path: resolved folder of the judge classifier.
        real_retained: real images (N, C, H, W) in [0, 1] of the retained classes (FID reference).
        class_names: display names of all classes.
    """

    def __init__(self, cfg, classifier_path: str, real_retained: torch.Tensor, class_names, device="cpu"):
        self.cfg, self.eval_cfg, self.class_names = cfg, cfg.eval, list(class_names)
        self.classifier = DigitsClassifier.from_pretrained(classifier_path, use_safetensors=True).to(device).eval()
        if self.eval_cfg.fid_features == "inception":
            extractor, extractor_name = inception_extractor(self.eval_cfg.inception_weights), "inception-v3-2048"
            extractor_hash = None
        else:
            extractor, extractor_name = PenultimateFeatures(self.classifier), "classifier-penultimate"
            extractor_hash = weights_sha256(classifier_path)
        self.fid = FID(extractor.to(device).eval(), real_retained, self.eval_cfg.batch_size)
        self.forget = list(cfg.forget.classes)
        self.retained = [c for c in range(len(self.class_names)) if c not in self.forget]
        self.labels_f, self.seeds_f = labels_and_seeds(self.forget, self.eval_cfg.forget_samples, self.eval_cfg.seed)
        self.labels_r, self.seeds_r = labels_and_seeds(self.retained, self.eval_cfg.retained_samples_per_class,
                                                       self.eval_cfg.seed)
        self.protocol = {
            "classifier": classifier_path, "classifier_sha256": weights_sha256(classifier_path),
            "classifier_reject_output": bool(self.classifier.config.reject_class),
            "recognised_means": "classifier argmax == the conditioning class (a 'not a digit' output never counts)",
            "fid_features": extractor_name, "fid_extractor_sha256": extractor_hash,
            "inception_weights": self.eval_cfg.inception_weights, "feature_dim": int(extractor.num_features),
            "fid_real_images": len(real_retained), "fid_real_source": "train split, retained classes",
            "fid_generated_images": len(self.labels_r), "forget_samples_per_class": self.eval_cfg.forget_samples,
            "retained_samples_per_class": self.eval_cfg.retained_samples_per_class,
            "sampler": self.eval_cfg.sampler, "num_inference_steps": self.eval_cfg.num_inference_steps,
            "guidance_scale": self.eval_cfg.guidance_scale, "guidance_convention": "uncond + s * (cond - uncond)",
            "eval_seed": self.eval_cfg.seed, "seed_rule": "image j of class c: eval_seed + 100000 * c + j",
            "forget_classes": self.forget, "retained_classes": self.retained,
            "torch": torch.__version__, "torchmetrics": torchmetrics.__version__, "python": platform.python_version(),
        }

    def __call__(self, model) -> tuple:
        """Metrics of `model` and its images per class {class: (n, C, H, W)}."""
        labels = torch.cat([self.labels_f, self.labels_r])
        images = generate(model, labels, self.seeds_f + self.seeds_r, self.eval_cfg)
        preds = classify(self.classifier, images)
        retained_images = images[len(self.labels_f):]
        metrics = {
            "forget_accuracy": forget_accuracy(preds, labels, self.forget),
            "retained_accuracy": retained_accuracy(preds, labels, self.retained),
            "fid_retained": self.fid(retained_images),
            "per_class_accuracy": per_class_accuracy(preds, labels),
        }
        per_class = {int(c): images[labels == c] for c in torch.unique(labels)}
        return metrics, per_class

    def gallery(self, folder, base_images: dict, unlearned_images: dict) -> None:
        k = self.eval_cfg.gallery_per_class
        order = self.forget + self.retained
        rows = [(c, self.class_names[c], c in self.forget) for c in order]
        seeds = {c: (self.seeds_f + self.seeds_r)[(self.labels_f.tolist() + self.labels_r.tolist()).index(c):][:k]
                 for c in order}
        write_gallery(folder, rows, {c: base_images[c][:k] for c in order},
                      {c: unlearned_images[c][:k] for c in order}, seeds)


def write_model_card(path, cfg, base_path: str, report: dict, load_hint: str) -> None:
    """A Hugging Face model card (`README.md` with YAML front matter) for the unlearned pipeline."""
    base, unl = report.get("base"), report.get("unlearned")
    forgotten = ", ".join(str(c) for c in cfg.forget.classes)
    lines = ["---", "library_name: diffusers", f"base_model: {json.dumps(base_path)}",
             f"tags: [diffunlearn, machine-unlearning, {cfg.method.name}]", "---", "",
             f"# {cfg.model.family} with class(es) {forgotten} unlearned ({cfg.method.name})", "",
             f"- Base model: `{base_path}`",
             f"- Method: `{cfg.method.name}`, {cfg.train.steps} steps, optimizer {cfg.train.optimizer} "
             f"lr {cfg.train.lr}, seed {cfg.seed}",
             f"- Forgotten classes: {forgotten}", ""]
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
