"""Forget scenarios of the classification benchmark: forget whole classes, or a random share of the samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from ..data import LabeledImages
from ..errors import UserError


@dataclass
class ScenarioConfig:
    """One forget request on the digits train split: `forget_classes`, or a random `forget_fraction` of it."""

    forget_classes: List[int] = field(default_factory=list)
    forget_fraction: Optional[float] = None
    seed: int = 0  # seed of the random forget split

    def __post_init__(self):
        if bool(self.forget_classes) == (self.forget_fraction is not None):
            raise UserError(f"a scenario needs forget_classes or forget_fraction, exactly one; got forget_classes="
                            f"{list(self.forget_classes)}, forget_fraction={self.forget_fraction}")
        if self.forget_fraction is not None and not 0 < self.forget_fraction < 1:
            raise UserError(f"forget_fraction {self.forget_fraction} is invalid; give a number in (0, 1)")


@dataclass
class Split:
    """D_f, D_r and the test set the scenario is scored on (test images of retained classes for class forgetting,
    the whole test split for sample forgetting, as in SalUn's protocol)."""

    forget: LabeledImages
    retain: LabeledImages
    test: LabeledImages


def random_forget_split(train: LabeledImages, fraction: float, seed: int) -> tuple[LabeledImages, LabeledImages]:
    """(D_f, D_r): a seeded random `fraction` of `train` (at least one sample) and the rest, each in index order."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    count = max(1, round(fraction * len(train)))
    pick = lambda idx: type(train)(train.images[idx.sort().values], train.labels[idx.sort().values])  # noqa: E731
    return pick(order[:count]), pick(order[count:])


def make_split(scenario: ScenarioConfig, train: LabeledImages, test: LabeledImages, num_classes: int) -> Split:
    """The forget / retain / test sets of a scenario.

    Raises:
        UserError: a forget class outside 0..num_classes-1, or one that leaves no class to retain.
    """
    if scenario.forget_fraction is not None:
        forget, retain = random_forget_split(train, scenario.forget_fraction, scenario.seed)
        return Split(forget, retain, test)
    bad = [c for c in scenario.forget_classes if not 0 <= c < num_classes]
    if bad or len(set(scenario.forget_classes)) >= num_classes:
        raise UserError(f"forget_classes {list(scenario.forget_classes)} invalid; valid: distinct ids in "
                        f"0..{num_classes - 1}, leaving at least one class")
    forget, retain = train.forget_remain(scenario.forget_classes)
    return Split(forget, retain, test.select_classes(scenario.forget_classes, keep=False))
