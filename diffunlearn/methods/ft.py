"""FT: fine-tuning on the remain set only (forgetting by catastrophic forgetting)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import MethodConfig
from ..registry import register_method
from ..training.streams import Stream
from .base import UnlearningMethod


@dataclass
class FTConfig(MethodConfig):
    name: str = "ft"
    clip: Optional[float] = None  # gradient-norm clip of each step; null = none


@register_method
class FineTune(UnlearningMethod):
    """Fine-tuning on D_r (Warnecke et al., "Machine Unlearning of Features and Labels", NDSS 2023; the FT baseline
    of SalUn and SFR-on): the ordinary training loss on remain batches, so D_f is forgotten only as far as training
    on other data overwrites it."""

    name = "ft"
    config_cls = FTConfig

    def training_step(self, step: int) -> dict:
        loss_r = self.context.losses(self.context.remain_batch(step), step, stream=Stream.REMAIN).mean()
        self.context.update(loss_r, clip=self.cfg.clip)
        return {"remain_loss": loss_r.detach()}
