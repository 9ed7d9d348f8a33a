"""SalUn: relabelling restricted to the weights most salient for the forget loss."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..registry import register_method
from .rl import Relabel, RLConfig
from .saliency import gradient_saliency_mask


@dataclass
class SalUnConfig(RLConfig):
    name: str = "salun"
    # SalUn's DDPM defaults (its README command: --method rl --alpha 1e-3, mask ratio 0.5): the generation loss
    # (pseudo labels, per-element MSE) plus 1e-3 x the remain loss summed over (C, H, W)
    target: str = "pseudo_label"
    remain_weight: float = 1e-3
    keep_fraction: float = 0.5  # share of weights with the largest |grad of the forget loss| that may change
    mask_batches: int = 8

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.keep_fraction <= 1.0:
            raise UserError(f"method.keep_fraction must be in (0, 1], got {self.keep_fraction!r}")


@register_method
class SalUn(Relabel):
    """SalUn (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency", ICLR 2024).

    The mask keeps the `keep_fraction` of parameter elements with the largest magnitude of the forget-loss
    gradient on the original model (one global threshold); every update is masked.
    """

    name = "salun"
    config_cls = SalUnConfig

    def setup(self):
        self.mask = gradient_saliency_mask(self.context, self.cfg.mask_batches, self.cfg.keep_fraction)
        return {"mask_density": self.mask.density()}
