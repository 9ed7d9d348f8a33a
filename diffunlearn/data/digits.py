"""scikit-learn's bundled handwritten digits (1,797 images, 8x8, 10 classes) as the embedded data set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NUM_DIGIT_CLASSES = 10
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class LabeledImages(torch.utils.data.Dataset):
    """Images in [0, 1] with integer labels.

    Attributes:
        images: (N, C, H, W) float32 in [0, 1].
        labels: (N,) int64.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.images[index] * 2 - 1, "labels": self.labels[index]}

    def select_classes(self, classes, keep: bool = True) -> "LabeledImages":
        """The subset whose labels are (keep=True) or are not (keep=False) in `classes`."""
        inside = torch.isin(self.labels, torch.as_tensor(list(classes), dtype=self.labels.dtype))
        chosen = inside if keep else ~inside
        return LabeledImages(self.images[chosen], self.labels[chosen])

    def forget_remain(self, forget_classes) -> tuple["LabeledImages", "LabeledImages"]:
        """Split by class into the forget set D_f and the remain set D_r."""
        return self.select_classes(forget_classes, True), self.select_classes(forget_classes, False)

    def random_forget_remain(self, fraction: float, seed: int) -> tuple["LabeledImages", "LabeledImages"]:
        """(D_f, D_r): a seeded random `fraction` of the samples (at least one) and the rest, each in index order."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        count = max(1, round(fraction * len(self)))
        pick = lambda idx: type(self)(self.images[idx.sort().values], self.labels[idx.sort().values])  # noqa: E731
        return pick(order[:count]), pick(order[count:])


def load_digits_splits(split_seed: int = 0, test_fraction: float = 0.2) -> tuple[LabeledImages, LabeledImages]:
    """The fixed, stratified train/test split of the digits (1,437 / 360 images at the defaults).

    Returns:
        (train, test) with images (N, 1, 8, 8) scaled from 0..16 to [0, 1].
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None]
    index = np.arange(len(images))
    train_idx, test_idx = train_test_split(index, test_size=test_fraction, random_state=split_seed,
                                           stratify=digits.target)
    train_idx.sort()
    test_idx.sort()

    def take(idx):
        return LabeledImages(torch.from_numpy(images[idx]), torch.from_numpy(digits.target[idx]).long())

    return take(train_idx), take(test_idx)
