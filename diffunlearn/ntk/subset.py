"""Which parameters the NTK is taken over: the linear head, BatchNorm affine parameters, or a name pattern."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..errors import UserError

HEAD_ATTRIBUTES = ("head", "heads", "fc", "classifier", "classification_head")  # timm, torchvision, transformers
SUBSET_HELP = ("'head', 'bn', 'prompt', or a regex / glob over parameter names, joined with '+' (e.g. 'bn+head', "
               "'prompt+head', 'lora_')")


def find_head(model: nn.Module) -> nn.Linear:
    """The classifier head: the nn.Linear at `model.<attr>` for attr in `HEAD_ATTRIBUTES` (or the last one inside
    it: torchvision's `heads`, a transformers `classifier` block), else the model's last nn.Linear (e.g. the
    `Linear` ending an `nn.Sequential`). That it is the final layer, whose output is the logits, is checked when
    its features are taken (`HeadRows`).

    Raises:
        UserError: the model has no nn.Linear at all.
    """
    for attr in HEAD_ATTRIBUTES:
        module = getattr(model, attr, None)
        if isinstance(module, nn.Module):
            linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
            if linears:
                return linears[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    raise UserError(f"cannot find the classifier head of {type(model).__name__}: it has no nn.Linear layer; "
                    f"choose another subset: {SUBSET_HELP}")


@dataclass
class Subset:
    """The chosen parameters, in `named_parameters()` order (the fixed flattening order).

    Attributes:
        names: parameter names.
        head: the head Linear when the subset is exactly the head (the exact, autograd-free path), else None.
    """

    spec: str
    names: list
    head: Optional[nn.Linear] = None


def _matching(names, token: str) -> list:
    if any(ch in token for ch in "*?["):
        return [n for n in names if fnmatch.fnmatchcase(n, token)]
    try:
        pattern = re.compile(token)
    except re.error as exc:
        raise UserError(f"subset pattern {token!r} is not a valid regex ({exc}); give {SUBSET_HELP}") from None
    return [n for n in names if pattern.search(n)]


def select_subset(model: nn.Module, spec: str) -> Subset:
    """Parse `spec` ('head', 'bn', 'prompt', a pattern, or several joined by '+') against the model's parameters
    ('prompt': the tokens of `diffunlearn.add_visual_prompts`).

    Raises:
        UserError: an empty spec, or a part of it that matches no parameter.
    """
    if not isinstance(spec, str) or not spec.strip() or any(not t.strip() for t in spec.split("+")):
        raise UserError(f"subset {spec!r} is empty; give {SUBSET_HELP}")
    params = dict(model.named_parameters())
    by_id = {id(p): name for name, p in params.items()}
    chosen = set()
    for token in (t.strip() for t in spec.split("+")):
        if token == "head":
            found = [by_id[id(p)] for p in find_head(model).parameters()]
        elif token == "prompt":
            found = [n for n in params if n.startswith("visual_prompts.")]
            if not found:
                raise UserError(f"subset 'prompt' matches no parameter: {type(model).__name__} holds no visual "
                                "prompts; add them with diffunlearn.add_visual_prompts(model, num_tokens=...)")
        elif token == "bn":
            found = [by_id[id(p)] for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                     for p in (m.weight, m.bias) if p is not None]
            if not found:
                raise UserError(f"subset 'bn' matches no parameter: {type(model).__name__} has no BatchNorm layer "
                                f"with affine parameters; give {SUBSET_HELP}")
        else:
            found = _matching(params, token)
            if not found:
                sample = ", ".join(list(params)[:6]) + (", ..." if len(params) > 6 else "")
                raise UserError(f"subset pattern {token!r} matches no parameter of {type(model).__name__} "
                                f"(parameters: {sample}); give {SUBSET_HELP}")
        chosen.update(found)
    names = [n for n in params if n in chosen]
    head = find_head(model) if spec.strip() == "head" else None
    return Subset(spec, names, head)


INITS = ("zeros", "current")  # the named linearisation points; a dict name->tensor gives any other
INIT_HELP = "'zeros' (the default), 'current' or None (the current weights), or a dict name->tensor"


def init_label(init, w0: Optional[dict]) -> str:
    """What `info["init"]` records for an `init` that `resolve_init` turned into `w0`: 'zeros' (a head weight was
    linearised at 0), 'current' (every subset weight at its current value) or 'given' (a dict)."""
    if isinstance(init, Mapping):
        return "given"
    return "current" if w0 is None else "zeros"


def _head_names(model: nn.Module) -> set:
    """Names of the classifier head's parameters (`find_head`), or none for a model without an nn.Linear."""
    try:
        head = find_head(model)
    except UserError:
        return set()
    by_id = {id(p): name for name, p in model.named_parameters()}
    return {by_id[id(p)] for p in head.parameters() if id(p) in by_id}


def resolve_init(init, model: nn.Module, subset: Subset) -> Optional[dict]:
    """The linearisation point w0 of the subset: "zeros", "current" or None (the current weights: returns None),
    or {name: tensor}.

    "zeros" puts the classifier head's weights (`find_head`) at 0, the centre of the fine-tune's weight decay,
    where the head predicts uniformly (what curvature="uniform" assumes), and leaves the subset's other weights
    (BatchNorm, prompts, LoRA) at their current values, as the classifier benchmark's `init: zeros` does: "the
    trained backbone and the head it was fitted from". Returns None (the current weights) when the subset holds
    no head weight. At a zero head the logits do not depend on the weights below it, so their rows vanish and
    only the head moves ("bn+head" gives the "head" result; on the digits CNN BN + head all at 0, the meaning
    before issue 30, gave no step at all on BN and did not forget).

    Keys of `init` outside the subset that name other model weights are ignored (a full state dict is fine).

    Raises:
        UserError: an unknown string, another type, missing subset names, unknown names or wrong shapes.
    """
    if init is None or (isinstance(init, str) and init == "current"):
        return None
    params = dict(model.named_parameters())
    if isinstance(init, str):
        if init != "zeros":
            raise UserError(f"unknown init {init!r}; valid: {INIT_HELP}")
        head = _head_names(model)
        if not head.intersection(subset.names):
            return None
        return {n: torch.zeros_like(params[n]).detach() if n in head else params[n].detach().clone()
                for n in subset.names}
    if not isinstance(init, Mapping):
        raise UserError(f"init of type {type(init).__name__} is not supported; valid: {INIT_HELP}")
    known = set(model.state_dict())
    missing = [n for n in subset.names if n not in init]
    unknown = [k for k in init if k not in known]
    if missing or unknown:
        raise UserError(f"init does not fit the subset: missing {missing[:5]}, unknown names {unknown[:5]}; "
                        f"the subset is {subset.names[:8]}")
    out = {}
    for n in subset.names:
        try:
            value = torch.as_tensor(init[n]).detach()
        except (TypeError, ValueError, RuntimeError):
            raise UserError(f"init[{n!r}] of type {type(init[n]).__name__} is not a tensor; give a tensor of shape "
                            f"{tuple(params[n].shape)}") from None
        if value.shape != params[n].shape:
            raise UserError(f"init[{n!r}] has shape {tuple(value.shape)}; expected {tuple(params[n].shape)}")
        out[n] = value.to(dtype=params[n].dtype, device=params[n].device).clone()
    return out
