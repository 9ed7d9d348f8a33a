"""Evaluation targets: the conditions the judge scores for a run (forget and retained classes or prompts)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import load_digits_splits
from ..data.sets import prompt_seed_key, remain_classes
from ..errors import UserError


@dataclass
class Target:
    """One evaluated condition.

    Attributes:
        key: class id or prompt, the key of per-target results.
        name: display name (class name or prompt).
        condition: what the model is conditioned on: a class id () or prompt token ids (L,).
        label: the judge label that counts as "recognised" for this target.
        seed_key: image j of this target uses seed eval.seed + 100000 * seed_key + j.
        forget: True for forget targets.
    """

    key: object
    name: str
    condition: torch.Tensor
    label: int
    seed_key: int
    forget: bool


def _label_index(labels, name: str, what: str) -> int:
    if name not in labels:
        raise UserError(f"{what} {name!r} is not a label of the judge; valid: {', '.join(labels)}")
    return list(labels).index(name)


def eval_targets(cfg, model, judge_labels) -> tuple:
    """(forget targets, retained targets) scored by the judge."""
    if not cfg.forget.is_concept:
        def target(c, forget):
            name = judge_labels[c] if c < len(judge_labels) else str(c)
            return Target(c, name, torch.tensor(c), c, c, forget)

        return ([target(c, True) for c in cfg.forget.classes],
                [target(c, False) for c in remain_classes(cfg, model)])
    prompts = dict(cfg.eval.prompts)
    forget_prompts = list(cfg.forget.prompts)
    concept = cfg.forget.concept or prompts.get(forget_prompts[0])
    if concept is None:
        raise UserError(f"cannot tell which judge label the forget prompt {forget_prompts[0]!r} asks for; set "
                        f"forget.concept (one of: {', '.join(judge_labels)}) or list the prompt in eval.prompts")
    forget_label = _label_index(judge_labels, concept, "forget.concept")
    kept = {p: lab for p, lab in prompts.items() if p not in forget_prompts and lab != concept}
    if not kept:
        raise UserError("eval.prompts holds no retained prompt (prompt -> judge label other than the forgotten "
                        f"concept {concept!r}); list the prompts whose quality must be kept")
    ids = model.tokenize(forget_prompts + list(kept))
    forget = [Target(p, p, ids[i], forget_label, prompt_seed_key(p), True) for i, p in enumerate(forget_prompts)]
    retained = [Target(p, p, ids[len(forget_prompts) + i], _label_index(judge_labels, lab, f"eval.prompts[{p!r}]"),
                       prompt_seed_key(p), False) for i, (p, lab) in enumerate(kept.items())]
    return forget, retained


REFERENCE_SOURCES = {
    "heldout": "held-out digits (test split) of the targets' labels: no recipe and no remain step saw them",
    "train": "digits train images of the targets' labels (the images the recipes and D_r hold)",
}


def real_reference(cfg, targets, split: str = "heldout") -> torch.Tensor:
    """Real digits of the targets' labels (the FID reference of eval.fid_reference=heldout / train): the digits
    test split at data.split_seed / data.test_fraction (the split every embedded recipe holds out) less any image
    equal to a train image, or the train split."""
    if cfg.eval.judge != "digits":
        raise UserError(f"eval.fid_reference={split} needs real images of the judge's labels, which only the digits "
                        f"judge has (eval.judge={cfg.eval.judge!r}); use eval.fid_reference=base")
    train, test = load_digits_splits(cfg.data.split_seed, cfg.data.test_fraction)
    labels = sorted({t.label for t in targets})
    if split == "train":
        return train.select_classes(labels).images
    test = test.select_classes(labels)
    seen = (test.images.flatten(1)[:, None] == train.images.flatten(1)[None]).all(-1).any(-1)
    return test.images[~seen]
