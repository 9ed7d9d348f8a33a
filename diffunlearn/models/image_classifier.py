"""Image classifiers as a model family, so the unlearning engine (trainer, SFR-on, GA, RL, FT) runs on them.

The engine asks a family for per-sample training losses of a batch; for a classifier that is the cross-entropy of
its logits. The diffusion-only arguments of `training_losses` (noise generator, condition dropout, guidance,
antithetic timesteps, process shard) have no meaning here and are accepted and ignored. Two kinds of network:
- `DigitsClassifier` (diffusers `ModelMixin` folder, `_class_name` in its config.json), which takes images in
  [0, 1];
- any transformers `AutoModelForImageClassification` folder (`architectures` in config.json), which takes
  normalised pixel values; batches in [-1, 1] match the usual mean 0.5 / std 0.5 normalisation.
Both are saved and loaded with `save_pretrained` / `from_pretrained`, safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Optional

import torch
from torch import nn

from ..errors import UserError, choice_error
from ..registry import register_family
from .base import TrainableModel

PIXEL_RANGES = ("unit", "signed")  # [0, 1] or [-1, 1]


@register_family
class ImageClassifier(TrainableModel):
    """Wrapper of a classifier network (logits (B, C) from images (B, C_in, H, W)) for unlearning.

    Args:
        network: the classifier; its output is a logits tensor or an object with `.logits` (transformers).
        pixel_range: what the network takes: "unit" ([0, 1], e.g. `DigitsClassifier`) or "signed" ([-1, 1]).
        num_classes: classes that unlearning may relabel to (default: the network's number of outputs; a
            `DigitsClassifier` with a reject output has one output more than it has classes).
    """

    family = "classifier"
    task: ClassVar[str] = "classification"  # methods with a classification variant (RL) check this
    load_hint = ("`DigitsClassifier.from_pretrained(folder)` (diffunlearn.models.digits_classifier) or, for a transformers "
                 "classifier, `AutoModelForImageClassification.from_pretrained(folder)`")

    def __init__(self, network: nn.Module, pixel_range: str = "unit", num_classes: Optional[int] = None):
        if pixel_range not in PIXEL_RANGES:
            raise choice_error("pixel_range", pixel_range, PIXEL_RANGES)
        self._network, self.pixel_range = network, pixel_range
        config = getattr(network, "config", None)
        self.num_classes = num_classes or _config_classes(config) or _output_size(network)

    # --- loading and saving -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "ImageClassifier":
        """Load a `DigitsClassifier` or a transformers image-classification folder (safetensors only).

        Raises:
            UserError: a folder without config.json, or one that is neither kind.
        """
        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            raise UserError(f"classifier folder {str(path)!r} has no config.json; give a DigitsClassifier or a "
                            "transformers AutoModelForImageClassification folder")
        config = json.loads(config_file.read_text())
        if config.get("_class_name") == "DigitsClassifier":
            from .digits_classifier import DigitsClassifier

            return cls(DigitsClassifier.from_pretrained(path, use_safetensors=True, **kwargs).eval(), "unit")
        if config.get("architectures"):
            from transformers import AutoModelForImageClassification

            network = AutoModelForImageClassification.from_pretrained(path, use_safetensors=True, **kwargs)
            return cls(network.eval(), "signed")
        raise UserError(f"config.json in {str(path)!r} names neither DigitsClassifier (_class_name) nor a "
                        "transformers architecture (architectures); cannot load it as a classifier")

    def save_pretrained(self, path) -> None:
        self.network.save_pretrained(path, safe_serialization=True)

    def to(self, device) -> "ImageClassifier":
        self.network.to(device)
        return self

    # --- what the methods and the trainer use -------------------------------------------------------------------
    @property
    def network(self) -> nn.Module:
        return self._network

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of images (B, C_in, H, W) in [-1, 1], through the trainer's module when one is set."""
        images = pixel_values.to(self.device)
        out = self.module((images + 1) / 2 if self.pixel_range == "unit" else images)
        return getattr(out, "logits", out)

    def training_losses(self, batch: dict, generator: Optional[torch.Generator] = None, cond_drop: float = 0.0,
                        guidance_scale: Optional[float] = None, antithetic: bool = False, cond=None,
                        shard: tuple = (0, 1)) -> torch.Tensor:
        """Per-sample cross-entropy (B,) of a batch.

        Args:
            batch: "pixel_values" (B, C_in, H, W) in [-1, 1] and "labels" (B,).
            cond: labels (B,) to use instead of the batch's (e.g. relabelled targets).
            generator, cond_drop, guidance_scale, antithetic, shard: diffusion-only; ignored (a classifier's loss
                draws no noise, and every process computes its own rows' losses).
        """
        labels = (batch["labels"] if cond is None else cond).to(self.device)
        return nn.functional.cross_entropy(self.logits(batch["pixel_values"]).float(), labels, reduction="none")

    def relabelled(self, batch: dict, generator: torch.Generator) -> dict:
        """RL for classifiers: each sample gets a label drawn uniformly from the other classes, (B,) -> (B,)."""
        labels = batch["labels"]
        shift = torch.randint(1, self.num_classes, labels.shape, generator=generator, device=generator.device)
        return {**batch, "labels": (labels + shift.to(labels.device)) % self.num_classes}


def _config_classes(config) -> Optional[int]:
    """Number of classes from a DigitsClassifier config (num_classes) or a transformers one (num_labels)."""
    if config is None:
        return None
    value = config.get("num_classes") if isinstance(config, dict) else getattr(config, "num_classes", None)
    return value if isinstance(value, int) else getattr(config, "num_labels", None)


def _output_size(network: nn.Module) -> int:
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"cannot tell the number of classes of {type(network).__name__}; pass num_classes=")
    return linears[-1].out_features
