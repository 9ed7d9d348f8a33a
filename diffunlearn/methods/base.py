"""Base class of unlearning methods.

A method is a short class in one file: it declares its config dataclass, optionally precomputes something in
`setup` (a saliency mask), and in `training_step` computes losses and asks the context for optimizer updates.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch



class UnlearningMethod:
    """Subclass, set `name` and `config_cls`, register with `@register_method`."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    supports_concepts: ClassVar[bool] = False  # True if it can forget prompts (forget.prompts -> anchors)
    supports_classes: ClassVar[bool] = True  # False for prompt-only methods (ESD)
    supports_fsdp: ClassVar[bool] = True  # False where a run under FSDP2 is known to fail or was never checked
    supported_subsets: ClassVar[Optional[tuple]] = None  # the model.subset values it works on; None: any
    supported_families: ClassVar[Optional[tuple]] = None  # the model families it works on; None: any

    def __init__(self, cfg, context):
        self.cfg, self.context, self.model = cfg, context, context.model

    def setup(self) -> Optional[dict]:
        """Work done once before the first step (timed separately); may return info for the report."""
        return None

    def training_step(self, step: int) -> dict:
        """One unlearning iteration; returns scalar tensors to log (no host sync needed)."""
        raise NotImplementedError


def adaptive_weights(losses: torch.Tensor, lam: float, eps: float = 1e-8, accelerator=None) -> torch.Tensor:
    """SFR-on's forget weights w_i = l_i^-lam / sum_j l_j^-lam, detached: (B,) -> (B,).

    Samples with a low loss (still remembered) get the largest weight; lam = 0 gives uniform 1/B (plain ascent).
    Computed as a softmax of -lam * log(l) for numerical stability. With several processes the sum runs over the
    global batch (losses are gathered) and this process's slice of the weights is returned.
    """
    logits = -lam * torch.log(losses.detach().float().clamp_min(eps))
    if accelerator is None or accelerator.num_processes == 1:
        return torch.softmax(logits, dim=0)
    weights = torch.softmax(accelerator.gather(logits), dim=0)
    return weights.view(accelerator.num_processes, -1)[accelerator.process_index]
