"""Generation metrics: forget accuracy (FA), retained accuracy and FID of the retained classes.

Sampling is seeded per image: image j of class c always starts from the noise of seed `eval.seed + c * 100_000 + j`,
so the base and the unlearned model are compared on identical noise, and results do not depend on the batch size
or on how the images are shared out between processes.

Distributed evaluation: every process takes the rows `process_share` gives it; what is reported is made of sums
over processes (judge counts, FID feature sums), so it is the statistic of the union of the shares, the 1-process
image set.
"""

from __future__ import annotations

import math

import torch

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95% intervals


@torch.inference_mode()
def classify(classifier, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted class ids (N,) of images (N, C, H, W) in [0, 1]."""
    device = next(classifier.parameters()).device
    return torch.cat([classifier(images[i:i + batch_size].to(device)).argmax(-1).cpu()
                      for i in range(0, len(images), batch_size)])


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor) -> dict:
    """{class: share of samples conditioned on it that the classifier assigns to it}."""
    return {int(c): (preds[labels == c] == c).float().mean().item() for c in torch.unique(labels)}


def wilson_interval(successes: int, n: int, z: float = Z95) -> list:
    """The Wilson score interval [low, high] of a share `successes / n` (95% by default): where a binomial
    proportion p satisfies |successes / n - p| <= z * sqrt(p (1 - p) / n). [0, 1] when n is 0."""
    if n <= 0:
        return [0.0, 1.0]
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends (no float residue) at 0 and n successes
    return [low, 1.0 if successes == n else min(1.0, centre + half)]


def share_interval(share: float, n: int) -> list:
    """`wilson_interval` of a share measured on `n` samples (the count is rounded from share * n)."""
    return wilson_interval(round(share * n), n)


def with_interval(value: float, interval) -> str:
    """`0.375 [0.152, 0.646]`: a share with its 95% interval, for tables and cards."""
    return f"{value:.3f}" if not interval else f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
