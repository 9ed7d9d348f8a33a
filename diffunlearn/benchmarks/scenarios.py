"""Forget scenarios of the classification benchmark: forget whole classes, or a random share of the samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..data import LabeledImages
from ..errors import UserError


@dataclass
class ScenarioConfig:
    """One forget request on the digits train split, or a series of them (trials) whose metrics are averaged.

    Exactly one of: `forget_classes` (forget these classes together), `forget_each` (one trial per listed class,
    forgetting it alone), `forget_fraction` (a random share of the samples, split by `seed`, or one trial per
    entry of `seeds`).
    """

    forget_classes: List[int] = field(default_factory=list)
    forget_fraction: Optional[float] = None
    seed: int = 0  # seed of the random forget split
    forget_each: List[int] = field(default_factory=list)
    seeds: List[int] = field(default_factory=list)

    def __post_init__(self):
        given = [k for k in ("forget_classes", "forget_each", "forget_fraction")
                 if getattr(self, k) not in ([], None)]
        if len(given) != 1:
            raise UserError(f"a scenario needs exactly one of forget_classes, forget_each, forget_fraction; got "
                            f"forget_classes={list(self.forget_classes)}, forget_each={list(self.forget_each)}, "
                            f"forget_fraction={self.forget_fraction}")
        if self.forget_fraction is not None and not 0 < self.forget_fraction < 1:
            raise UserError(f"forget_fraction {self.forget_fraction} is invalid; give a number in (0, 1)")
        if self.seeds and self.forget_fraction is None:
            raise UserError(f"seeds {list(self.seeds)} apply to forget_fraction scenarios only")

    def trials(self) -> List["ScenarioConfig"]:
        """The single requests this scenario stands for, in order (one for a single request)."""
        if self.forget_each:
            return [ScenarioConfig(forget_classes=[c]) for c in self.forget_each]
        if self.seeds:
            return [ScenarioConfig(forget_fraction=self.forget_fraction, seed=s) for s in self.seeds]
        return [self]

    def describe(self) -> str:
        """e.g. "forget class 7", "forget 10% random samples, seed 0"."""
        if self.forget_classes:
            return f"forget class{'es' if len(self.forget_classes) > 1 else ''} " + \
                ", ".join(map(str, self.forget_classes))
        return f"forget {100 * self.forget_fraction:g}% random samples, seed {self.seed}"


@dataclass
class Split:
    """D_f, D_r and the test set the scenario is scored on (test images of retained classes for class forgetting,
    the whole test split for sample forgetting, as in SalUn's protocol)."""

    forget: LabeledImages
    retain: LabeledImages
    test: LabeledImages


def random_forget_split(train: LabeledImages, fraction: float, seed: int) -> tuple[LabeledImages, LabeledImages]:
    """(D_f, D_r): a seeded random `fraction` of `train` (at least one sample) and the rest, each in index order."""
    return train.random_forget_remain(fraction, seed)


def make_split(scenario: ScenarioConfig, train: LabeledImages, test: LabeledImages, num_classes: int) -> Split:
    """The forget / retain / test sets of a single request (one of `ScenarioConfig.trials()`).

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
