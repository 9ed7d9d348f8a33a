"""Generation metrics: forget accuracy (FA), retained accuracy and FID of the retained classes.

Sampling is seeded per image: image j of class c always starts from the noise of seed `eval.seed + c * 100_000 + j`,
so the base and the unlearned model are compared on identical noise, and results do not depend on the batch size
or on how the images are shared out between processes.

Distributed evaluation: every process takes the rows `process_share` gives it; what is reported is made of sums
over processes (judge counts, FID feature sums), so it is the statistic of the union of the shares, the 1-process
image set.
"""

from __future__ import annotations

import torch


@torch.inference_mode()
def classify(classifier, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted class ids (N,) of images (N, C, H, W) in [0, 1]."""
    device = next(classifier.parameters()).device
    return torch.cat([classifier(images[i:i + batch_size].to(device)).argmax(-1).cpu()
                      for i in range(0, len(images), batch_size)])


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor) -> dict:
    """{class: share of samples conditioned on it that the classifier assigns to it}."""
    return {int(c): (preds[labels == c] == c).float().mean().item() for c in torch.unique(labels)}


