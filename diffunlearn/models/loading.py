"""Load a run's base model: the family named by the config, from a local folder, `embedded:NAME` or a Hub id."""

from __future__ import annotations

from pathlib import Path

import torch

from ..assets import resolve_model_path
from ..errors import UserError
from ..registry import get_family

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickle_only(path: str) -> None:
    """Weights are only loaded from safetensors: a folder whose weights are all pickles is refused."""
    folder = Path(path)
    if not folder.is_dir():
        return
    pickles = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles and not any(folder.rglob("*.safetensors")):
        raise UserError(f"refusing pickle checkpoint(s) {pickles} in {path!r}: only safetensors weights are "
                        "loaded (convert them with safetensors.torch.save_file)")


def load_model(cfg):
    """Load the base model wrapper named by `cfg.model` (never modified on disk)."""
    from safetensors import SafetensorError

    family = get_family(cfg.model.family)
    path = resolve_model_path(cfg.model.path)
    refuse_pickle_only(path)
    try:
        model = family.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model.path {cfg.model.path!r} as a {cfg.model.family} diffusers folder "
                        f"({type(exc).__name__}: {first})") from None
    make_trainable(model, cfg)
    return model, path


def make_trainable(model, cfg) -> None:
    """Mark the config's subset trainable (`model.subset`; LoRA adapters added for `lora`)."""
    with torch.random.fork_rng(devices=[]):  # new weights (LoRA adapters) drawn from the run's seed, not from
        torch.manual_seed(cfg.seed)  # whatever state imports left the global generator in
        model.set_trainable(cfg.model.subset, cfg.model.lora_rank)


def memory_key(model) -> str:
    """Identity of an in-memory model's weights for caches and reports: `memory:sha256:HEX` over every module's
    parameter and buffer names, dtypes, shapes and bytes, and the scheduler's config."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for name, module in sorted(model.pipeline.components.items()):
        if isinstance(module, torch.nn.Module):
            for key, value in module.state_dict().items():
                tensor = value.detach().cpu().contiguous()
                digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
                digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif hasattr(module, "config"):
            digest.update(f"{name}:{json.dumps(dict(module.config), sort_keys=True, default=str)}\n".encode())
    return f"memory:sha256:{digest.hexdigest()}"


def trainable_copy(base, cfg) -> tuple:
    """(a trainable deep copy of the in-memory model `base`, `base`'s memory key): `base` itself is never changed."""
    import copy

    key = memory_key(base)
    model = copy.deepcopy(base)
    make_trainable(model, cfg)
    return model, key
