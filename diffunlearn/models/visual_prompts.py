"""Visual prompt tuning (Jia et al., "Visual Prompt Tuning", ECCV 2022) for vision transformers, attached with hooks.

`add_visual_prompts(model, num_tokens=10, deep=False)` registers a `visual_prompts` submodule on the model (its one
parameter, `visual_prompts.tokens`, is what the Fast-NTK subset `prompt` selects) and forward pre-hooks on the
encoder's layers; the model's own code is not copied or changed. Shallow prompts are inserted once, before the
first layer, right after the class token: [CLS, P_1..P_p, patches]. Deep prompts (one set per layer) are inserted
the same way before the first layer and replace the prompt positions before every later layer, as VPT-deep does.
The classifier reads the class token, so the sequence keeps its prompts to the end.

Layers are found on transformers ViT-like models (`<base>.layers`, or `<base>.encoder.layer` in older releases),
torchvision's `VisionTransformer` (`encoder.layers`) and timm's (`blocks`); any other encoder: pass `layers=`.
Hooks are callables held by the hooked layers that point at the model's own `visual_prompts` module, so a deep
copy of the model (Fast-NTK works on one) carries prompts of its own, and `torch.func.functional_call` on
`visual_prompts.tokens` reaches them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..outputs import atomic_write

ATTRIBUTE = "visual_prompts"
FILE = "visual_prompts.safetensors"


class VisualPrompts(nn.Module):
    """Prompt tokens (depth, num_tokens, hidden): depth 1 (shallow) or one set per layer (deep)."""

    def __init__(self, num_tokens: int, hidden_size: int, depth: int = 1, after: int = 1, std: float = 0.02,
                 seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.tokens = nn.Parameter(torch.randn(depth, num_tokens, hidden_size, generator=generator) * std)
        self.after = after

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[1]

    @property
    def deep(self) -> bool:
        return self.tokens.shape[0] > 1

    def settings(self) -> dict:
        return {"num_tokens": self.num_tokens, "hidden_size": self.tokens.shape[2], "deep": self.deep,
                "after": self.after}


class _PromptHook:
    """Forward pre-hook of layer `index`: insert (index 0) or replace (deep, later layers) the prompt tokens."""

    def __init__(self, prompts: VisualPrompts, index: int):
        self.prompts, self.index = prompts, index

    def __call__(self, module, args, kwargs):
        in_kwargs = not args
        hidden = kwargs["hidden_states"] if in_kwargs else args[0]
        prompts, after = self.prompts, self.prompts.after
        tokens = prompts.tokens[min(self.index, prompts.tokens.shape[0] - 1)]
        tokens = tokens.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
        rest = hidden[:, after:] if self.index == 0 else hidden[:, after + prompts.num_tokens:]
        hidden = torch.cat([hidden[:, :after], tokens, rest], dim=1)
        if in_kwargs:
            return args, {**kwargs, "hidden_states": hidden}
        return (hidden, *args[1:]), kwargs


def encoder_layers(model: nn.Module) -> list:
    """The transformer layers of a ViT-like model, in order (see the module docstring for where they are looked
    for)."""
    bases = [model] + [getattr(model, name) for name in (getattr(model, "base_model_prefix", None), "vit", "deit",
                                                         "encoder") if isinstance(name, str) and
                       isinstance(getattr(model, name, None), nn.Module)]
    for base in bases:
        for path in ("layers", "encoder.layer", "encoder.layers", "blocks"):
            found = base
            for part in path.split("."):
                found = getattr(found, part, None)
            if isinstance(found, (nn.ModuleList, nn.Sequential)) and len(found):
                return list(found)
    raise UserError(f"cannot find the transformer layers of {type(model).__name__} (looked for layers, "
                    "encoder.layer, encoder.layers, blocks); pass layers=[...] to add_visual_prompts")


def _hidden_size(model: nn.Module, layers: list) -> int:
    size = getattr(getattr(model, "config", None), "hidden_size", None) or getattr(model, "hidden_dim", None)
    if size:
        return int(size)
    norm = next((m for m in layers[0].modules() if isinstance(m, nn.LayerNorm)), None)
    if norm is None:
        raise UserError(f"cannot tell the hidden size of {type(model).__name__}; it has no config.hidden_size and "
                        "its first layer no LayerNorm")
    return int(norm.normalized_shape[-1])


def add_visual_prompts(model: nn.Module, num_tokens: int = 10, deep: bool = False, layers=None, after: int = 1,
                       seed: int = 0) -> VisualPrompts:
    """Attach prompt tokens to a vision transformer in place; returns the `VisualPrompts` module.

    Args:
        model: a ViT-like classifier (transformers `ViTForImageClassification`, torchvision, timm, or any model
            whose layers are given).
        num_tokens: prompt tokens per set.
        deep: one set of prompts per layer (VPT-deep) instead of one set before the first layer.
        layers: the encoder's layers, if they are not found by name.
        after: tokens before the prompts (1: the class token).
        seed: seed of the prompts' initialisation (normal, std 0.02).

    Raises:
        UserError: a model that already holds prompts, a bad count, or no layers found.
    """
    if isinstance(getattr(model, ATTRIBUTE, None), VisualPrompts):
        raise UserError(f"{type(model).__name__} already holds visual prompts; remove_visual_prompts(model) first")
    if not isinstance(num_tokens, int) or num_tokens < 1:
        raise UserError(f"num_tokens must be a positive integer, got {num_tokens!r}")
    layers = list(layers) if layers is not None else encoder_layers(model)
    param = next(model.parameters())
    prompts = VisualPrompts(num_tokens, _hidden_size(model, layers), len(layers) if deep else 1, after,
                            seed=seed).to(param.device, param.dtype)
    model.add_module(ATTRIBUTE, prompts)
    for index, layer in enumerate(layers[:len(layers) if deep else 1]):
        layer.register_forward_pre_hook(_PromptHook(prompts, index), with_kwargs=True)
    return prompts


def remove_visual_prompts(model: nn.Module) -> None:
    """Detach and delete the model's visual prompts (the model is as before `add_visual_prompts`)."""
    prompts = getattr(model, ATTRIBUTE, None)
    if not isinstance(prompts, VisualPrompts):
        raise UserError(f"{type(model).__name__} holds no visual prompts")
    for layer in encoder_layers(model):
        for key, hook in list(layer._forward_pre_hooks.items()):
            if isinstance(hook, _PromptHook):
                del layer._forward_pre_hooks[key]
                layer._forward_pre_hooks_with_kwargs.pop(key, None)
    delattr(model, ATTRIBUTE)


def save_visual_prompts(model: nn.Module, folder) -> Path:
    """Write the model's prompts to `folder/visual_prompts.safetensors` (settings in its metadata)."""
    from safetensors.torch import save_file

    prompts = getattr(model, ATTRIBUTE, None)
    if not isinstance(prompts, VisualPrompts):
        raise UserError(f"{type(model).__name__} holds no visual prompts to save")
    path = Path(folder) / FILE
    atomic_write(path, lambda tmp: save_file({"tokens": prompts.tokens.detach().cpu().contiguous()}, str(tmp),
                                             metadata={"settings": json.dumps(prompts.settings())}))
    return path


def load_visual_prompts(model: nn.Module, folder, layers=None) -> VisualPrompts:
    """Attach the prompts saved in `folder` (by `save_visual_prompts`) to `model` and load their values."""
    from safetensors import safe_open

    path = Path(folder) / FILE
    if not path.is_file():
        raise UserError(f"no {FILE} in {str(folder)!r}; save prompts with save_visual_prompts(model, folder)")
    with safe_open(str(path), framework="pt") as fh:
        settings, tokens = json.loads(fh.metadata()["settings"]), fh.get_tensor("tokens")
    prompts = add_visual_prompts(model, settings["num_tokens"], settings["deep"], layers, settings["after"])
    if prompts.tokens.shape != tokens.shape:
        remove_visual_prompts(model)
        raise UserError(f"the prompts in {str(path)!r} have shape {tuple(tokens.shape)}; this model takes "
                        f"{tuple(prompts.tokens.shape)}")
    with torch.no_grad():
        prompts.tokens.copy_(tokens)
    return prompts
