"""Model families (one file each; each registers itself with `register_family`)."""

from .base import DiffusionModel, cfg_combine
from .ddpm import ClassConditionalDDPM, ClassConditionalDDPMPipeline

__all__ = ["ClassConditionalDDPM", "ClassConditionalDDPMPipeline", "DiffusionModel", "cfg_combine"]
