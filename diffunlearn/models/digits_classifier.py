"""The digits classifier: evaluates forget accuracy and supplies FID features (its penultimate layer).

A small CNN with batch norm and a linear head, saved like a diffusers model (config.json + safetensors) through
`ModelMixin` / `ConfigMixin`, so `DigitsClassifier.from_pretrained(folder)` rebuilds it.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class DigitsClassifier(ModelMixin, ConfigMixin):
    """Conv-BN-ReLU x3 with one 2x pooling, global average pooling, linear `head`.

    Input: images (B, C, H, W) in [0, 1]. `features` gives the penultimate (B, channels[-1]) activations.
    With `reject_class`, the head has one more output, index `num_classes`, meaning "not a digit": a judge of
    generated images must be able to say that noise is no digit, or forget accuracy measures its bias on noise.
    """

    @register_to_config
    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: tuple = (32, 64, 128),
                 reject_class: bool = False):
        super().__init__()
        layers, prev = [], in_channels
        for i, width in enumerate(channels):
            layers += [nn.Conv2d(prev, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if i == 0:
                layers.append(nn.MaxPool2d(2))
            prev = width
        self.backbone = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(prev, num_classes + int(reject_class))
        self.num_features = prev

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class PenultimateFeatures(nn.Module):
    """Feature extractor for torchmetrics' FID: images in [0, 1] -> classifier penultimate features (B, d)."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images.float()).double()
