"""GA: plain gradient ascent on the forget set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import MethodConfig
from ..registry import register_method
from ..training.streams import Stream
from .base import UnlearningMethod


@dataclass
class GAConfig(MethodConfig):
    name: str = "ga"
    clip: Optional[float] = 1.0  # gradient-norm clip of the ascent step


@register_method
class GradientAscent(UnlearningMethod):
    """Gradient ascent on D_f (the classic baseline, e.g. Thudi et al., 2022): maximise the mean forget loss (for
    concepts: the denoising loss of the forget prompts' images under the forget prompts)."""

    name = "ga"
    config_cls = GAConfig
    supports_concepts = True

    def training_step(self, step: int) -> dict:
        loss_f = self.context.losses(self.context.forget_batch(step), step, stream=Stream.FORGET).mean()
        self.context.update(-loss_f, clip=self.cfg.clip)
        return {"forget_loss": loss_f.detach()}
