"""The Evaluator: forget accuracy, retained accuracy and FID of one model under a run's protocol, and how a run
builds it (targets, judge, FID reference)."""

from __future__ import annotations

import platform
from typing import Optional

import torch
import torchmetrics
from accelerate.utils import gather_object

from ..data.generated import generate, image_seed, sample_seeds
from ..distributed import process_share, sum_over_processes
from ..errors import UserError
from .fid import FID, check_inception_weights, inception_extractor
from .gallery import write_gallery
from .metrics import wilson_interval


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
        train_reference: this process's share of the retained targets' train images, when the reference is
            held out: `fid_retained_train` (FID to the images the recipes and D_r hold) is reported beside it.
    """

    def __init__(self, cfg, judge, forget, retained, reference: torch.Tensor, reference_source: str, device="cpu",
                 forget_reference: Optional[torch.Tensor] = None, train_reference: Optional[torch.Tensor] = None):
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
        self.fid_train = None if train_reference is None else \
            FID(extractor, train_reference, self.eval_cfg.batch_size)
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
            "fid_reference": self.eval_cfg.fid_reference, "fid_real_images": self.fid.num_real,
            "fid_real_source": reference_source,
            "fid_train_real_images": self.fid_train.num_real if self.fid_train else None,
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

    def images(self, model, rows=None) -> torch.Tensor:
        """This process's share of the evaluation images of `model` (`self.rows`, or those where the bool mask
        `rows` is True), (n, C, H, W) in [0, 1]."""
        if rows is None:
            return generate(model, self.conditions, self.seeds, self.eval_cfg)
        seeds = [s for s, keep in zip(self.seeds, rows.tolist()) if keep]
        return generate(model, self.conditions[rows], seeds, self.eval_cfg)

    def __call__(self, model, part: str = "all") -> tuple:
        """Metrics of `model` and its gallery images per target {key: (k, C, H, W)}, k = eval.gallery_per_class
        (the first k seeds); in a distributed run every process calls it and gets the same result.

        `part`: "all"; "forget" samples only the forget targets (forget accuracy, its interval, the judge's
        confidence, `fid_forget`); "retained" only the retained ones (retained accuracy, FID_retained). A part
        returns no gallery ({})."""
        nf = len(self.forget)
        rows = None if part == "all" else (self.target_index < nf) == (part == "forget")
        images = self.images(model, rows)
        index = self.target_index if rows is None else self.target_index[rows]
        expected = self.expected if rows is None else self.expected[rows]
        probs = self.judge.probabilities(images)  # (n, L + 1), last column: none of the labels
        recognised = (probs.argmax(-1) == expected).long()
        counts = torch.zeros(2, len(self.targets), dtype=torch.long)  # (recognised, generated) per target
        counts[0].index_add_(0, index, recognised)
        counts[1].index_add_(0, index, torch.ones_like(recognised))
        correct, total = sum_over_processes(counts).float()  # float32 c / n: bit-equal to the mean of 0/1 flags
        is_forget = index < nf
        parts = ("forget", "retained") if part == "all" else (part,)
        metrics = {"per_target_accuracy": {t.key: (correct[i] / total[i]).item() for i, t in enumerate(self.targets)
                                           if ("forget" if t.forget else "retained") in parts}}
        if "forget" in parts:
            confidence = sum_over_processes(torch.stack([
                probs[is_forget].gather(1, expected[is_forget, None]).double().sum(),
                probs[is_forget, -1].double().sum()]))
            metrics.update({
                "forget_accuracy": (correct[:nf].sum() / total[:nf].sum()).item(),
                # Wilson 95% intervals on the pooled counts (every retained target has the same number of samples)
                "forget_accuracy_ci95": wilson_interval(int(correct[:nf].sum()), int(total[:nf].sum())),
                # the judge's mean probability that a forget sample shows the forgotten target, and that it shows none
                "forget_confidence": (confidence[0] / total[:nf].sum()).item(),
                "forget_none_probability": (confidence[1] / total[:nf].sum()).item()})
            if self.fid_forget is not None and self.eval_cfg.forget_samples * nf >= 2:  # FID needs a covariance
                metrics["fid_forget"] = self.fid_forget(images[is_forget])
        if "retained" in parts:
            per_target = metrics["per_target_accuracy"]
            metrics.update({
                "retained_accuracy": sum(per_target[t.key] for t in self.retained) / len(self.retained),
                "retained_accuracy_ci95": wilson_interval(int(correct[nf:].sum()), int(total[nf:].sum())),
                "fid_retained": self.fid(images[~is_forget]),
                **({"fid_retained_train": self.fid_train(images[~is_forget])} if self.fid_train else {})})
        if part == "all" and "fid_forget" in metrics and self.eval_cfg.retained_samples_per_class >= 2:
            metrics["fid_forget_nearest_retained"] = min(
                self.fid_forget(images[index == i]) for i in range(nf, len(self.targets)))
        return metrics, self.gather_gallery(images) if part == "all" else {}

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


def make_evaluator(cfg, model, judge, base_model, base_path: str, device="cpu", second_signal: bool = True,
                   targets=None):
    """The evaluator of a run: its judge, targets and FID reference (real digits, or base-model samples), of which
    each process holds (and generates) only its share; with `second_signal`, also the forget targets' reference
    for `fid_forget` and, for a held-out reference, the train images for `fid_retained_train` (the in-loop checks
    read neither). `targets`: the run's (forget, retained) `eval_targets`, when the caller has them."""
    from ..data.generated import generate_cached, image_seed
    from ..data.sets import base_model_key
    from ..distributed import process_share
    from .targets import REFERENCE_SOURCES, eval_targets, real_reference

    forget, retained = targets if targets is not None else eval_targets(cfg, model, judge.labels)
    split = cfg.eval.fid_reference
    if split != "base":
        def share(targets, which=split):  # this process's share of the real images of `targets`
            images = real_reference(cfg, targets, which)
            return images[process_share(len(images))]

        return Evaluator(cfg, judge, forget, retained, share(retained), REFERENCE_SOURCES[split], device=device,
                         forget_reference=share(forget) if second_signal else None,
                         train_reference=share(retained, "train") if split == "heldout" and second_signal else None)

    def base_samples(targets):  # this process's share of the base model's samples of `targets`, seeds + 50000
        n = cfg.eval.retained_samples_per_class
        rows = process_share(len(targets) * n)
        if not rows:
            return torch.empty(0)  # a process with no share (more processes than reference images)
        conds = torch.stack([targets[r // n].condition for r in rows])
        seeds = [image_seed(cfg.eval.seed + 50_000, targets[r // n].seed_key, r % n) for r in rows]
        return generate_cached(base_model, conds, seeds, cfg.eval, base_model_key(base_path))

    return Evaluator(cfg, judge, forget, retained, base_samples(retained),
                     "base-model samples of the targets (seeds offset by 50000)", device=device,
                     forget_reference=base_samples(forget) if second_signal else None)
