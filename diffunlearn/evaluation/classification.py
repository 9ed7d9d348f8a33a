"""Classification unlearning metrics: FA, RA, TA, MIA, D_KL to the retrained model (RT), Avg.D.

Vocabulary of SalUn (Fan et al., ICLR 2024) and "Model Sparsity Can Simplify Machine Unlearning" (Jia et al.,
NeurIPS 2023): FA / RA / TA are accuracies on the forget set D_f, the retain set D_r and the test set; MIA is the
MIA-efficacy on D_f; Avg.D is the mean absolute gap to RT over FA, RA, TA and MIA. All values are fractions in
[0, 1]. Every metric takes logits, or images together with `model=` to compute the logits.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..errors import UserError

GAP_KEYS = ("FA", "RA", "TA", "MIA")


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits (N, C), float32 on the CPU, of images (N, ...) with the model in eval mode (its mode is restored)."""
    was_training = model.training
    model.eval()
    first = next(model.parameters())
    try:
        outs = [getattr(out, "logits", out).float().cpu() for out in
                (model(images[i:i + batch_size].to(first.device, first.dtype)) for i in range(0, len(images),
                                                                                           batch_size))]
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0, 0)


def _logits(outputs: torch.Tensor, model: Optional[torch.nn.Module]) -> torch.Tensor:
    return predict_logits(model, outputs) if model is not None else torch.as_tensor(outputs)


def accuracy(outputs: torch.Tensor, labels: torch.Tensor, model: Optional[torch.nn.Module] = None) -> float:
    """Share of samples whose arg-max class is the label (FA on D_f, RA on D_r, TA on the test set); nan if empty.

    Args:
        outputs: logits (N, C), or images (N, ...) when `model` is given.
        labels: (N,) class ids.
    """
    if len(labels) == 0:
        return math.nan
    return int((_logits(outputs, model).argmax(-1).cpu() == torch.as_tensor(labels).cpu()).sum()) / len(labels)


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (N,) of softmax(logits (N, C)), in nats."""
    log_p = logits.double().log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


def forget_predicted_members(forget: torch.Tensor, retain: torch.Tensor, test: torch.Tensor,
                             model: Optional[torch.nn.Module] = None) -> np.ndarray:
    """Membership predictions (bool per D_f sample) of the entropy attack.

    A logistic regression (scikit-learn, standardised feature, balanced classes) is trained on the prediction
    entropy of D_r (members, 1) against the test set (non-members, 0) and applied to D_f.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    entropy = [prediction_entropy(_logits(t, model)).numpy()[:, None] for t in (forget, retain, test)]
    if len(entropy[1]) == 0 or len(entropy[2]) == 0:
        raise UserError(f"the membership attack needs retain and test samples; got {len(entropy[1])} retain and "
                        f"{len(entropy[2])} test")
    attack = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))
    attack.fit(np.concatenate(entropy[1:]), np.r_[np.ones(len(entropy[1])), np.zeros(len(entropy[2]))])
    return attack.predict(entropy[0]) == 1 if len(entropy[0]) else np.zeros(0, dtype=bool)


def mia_efficacy(forget: torch.Tensor, retain: torch.Tensor, test: torch.Tensor,
                 model: Optional[torch.nn.Module] = None) -> float:
    """MIA-efficacy: share of D_f samples the entropy attack predicts as NON-members (higher = better forgotten).

    This is the SalUn / "Model Sparsity" convention (their `SVC_MIA` returns 1 - mean(predict(D_f)) with D_f as
    the target-test set); `mia_member_rate` is its complement. Inputs are logits, or images when `model` is given.
    """
    members = forget_predicted_members(forget, retain, test, model)
    return float(1.0 - members.mean()) if len(members) else math.nan


def mia_member_rate(forget, retain, test, model=None) -> float:
    """Share of D_f samples the entropy attack predicts as members (1 - `mia_efficacy`)."""
    members = forget_predicted_members(forget, retain, test, model)
    return float(members.mean()) if len(members) else math.nan


def kl_to_retrained(outputs: torch.Tensor, rt_outputs: torch.Tensor, model=None, rt_model=None) -> float:
    """D_KL: mean over samples of KL(softmax(RT) || softmax(model)), in nats.

    Args:
        outputs: the model's logits (N, C), or images when `model` is given.
        rt_outputs: the retrained model's logits (N, C), or images when `rt_model` is given.
    """
    log_p = _logits(rt_outputs, rt_model).double().log_softmax(-1)
    log_q = _logits(outputs, model).double().log_softmax(-1)
    if log_p.shape != log_q.shape:
        raise UserError(f"model logits {tuple(log_q.shape)} and RT logits {tuple(log_p.shape)} differ in shape")
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean().item() if len(log_p) else math.nan


def average_gap(metrics: dict, rt_metrics: dict, keys=GAP_KEYS) -> float:
    """Avg.D: mean over `keys` of |metrics[k] - rt_metrics[k]|."""
    missing = [k for k in keys if k not in metrics or k not in rt_metrics]
    if missing:
        raise UserError(f"Avg.D needs {list(keys)}; missing {missing}")
    return sum(abs(metrics[k] - rt_metrics[k]) for k in keys) / len(keys)


def classification_report(model, rt_model, forget, retain, test, batch_size: int = 512) -> dict:
    """FA, RA, TA, MIA (efficacy), MIA_member_rate, and with an RT model also D_KL, Avg.D and RT's own metrics.

    Args:
        model: the classifier to evaluate; rt_model: the model retrained on D_r, or None.
        forget, retain, test: (images, labels) pairs, LabeledImages, datasets or loaders (see `diffunlearn.data.batches`).
    """
    from ..data.batches import LabeledBatches

    sets = {name: LabeledBatches(data, batch_size, name).tensors()
            for name, data in (("forget", forget), ("retain", retain), ("test", test))}

    def metrics_of(net) -> tuple[dict, dict]:
        logits = {name: predict_logits(net, images, batch_size) for name, (images, _) in sets.items()}
        members = forget_predicted_members(logits["forget"], logits["retain"], logits["test"])
        out = {"FA": accuracy(logits["forget"], sets["forget"][1]), "RA": accuracy(logits["retain"], sets["retain"][1]),
               "TA": accuracy(logits["test"], sets["test"][1]),
               "MIA": float(1 - members.mean()) if len(members) else math.nan,
               "MIA_member_rate": float(members.mean()) if len(members) else math.nan}
        return out, logits

    report, logits = metrics_of(model)
    if rt_model is not None:
        rt_report, rt_logits = metrics_of(rt_model)
        report["D_KL"] = kl_to_retrained(logits["forget"], rt_logits["forget"])
        report["Avg.D"] = average_gap(report, rt_report)
        report["RT"] = rt_report
    return report
