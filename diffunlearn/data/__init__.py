"""Data sets and deterministic, resumable batch sampling."""

from .digits import LabeledImages, load_digits_splits
from .sampling import StepSampler

__all__ = ["LabeledImages", "StepSampler", "load_digits_splits"]
