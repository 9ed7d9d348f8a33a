"""Embedded base models shipped inside the package, and model-path resolution.

`embedded:digits/ddpm` names a folder under `diffunlearn/assets/`; `assets/manifest.json` records for each one the
recipe that trained it, its seed, the sha256 of every file and its measured quality.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from .errors import UserError

ASSETS = Path(__file__).parent / "assets"
CONFIGS = Path(__file__).parent / "configs"  # the shipped YAML configs (package data; `configs/` links here)
MANIFEST = ASSETS / "manifest.json"
EMBEDDED_PREFIX = "embedded:"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def embedded_names() -> list:
    return sorted(json.loads(MANIFEST.read_text())) if MANIFEST.is_file() else []


def resolve_model_path(path: str) -> str:
    """Local folder, embedded model or Hub id -> something `from_pretrained` accepts.

    Raises:
        UserError: an embedded name that does not exist, or a path that is neither a folder nor a Hub id.
    """
    if path.startswith(EMBEDDED_PREFIX):
        name = path[len(EMBEDDED_PREFIX):]
        folder = ASSETS / name
        if not folder.is_dir():
            raise UserError(f"unknown embedded model {path!r}; valid: "
                            + ", ".join(EMBEDDED_PREFIX + n for n in embedded_names()))
        return str(folder)
    if Path(path).exists():
        if not Path(path).is_dir():
            raise UserError(f"model path {path!r} is a file; give a diffusers model folder")
        return path
    if HUB_ID.match(path) and not path.startswith((".", "/")):
        return path
    raise UserError(f"model path {path!r} does not exist; give a local diffusers folder, a Hub id (org/name) "
                    f"or one of: {', '.join(EMBEDDED_PREFIX + n for n in embedded_names())}")


def resolve_config_path(path) -> Path:
    """A config path as given when it exists; else `configs/REST` (relative) names the shipped config REST, so the
    README's commands work from any folder once the package is installed."""
    path = Path(path)
    if path.exists() or path.is_absolute() or not path.parts or path.parts[0] != "configs":
        return path
    shipped = CONFIGS.joinpath(*path.parts[1:])
    return shipped if shipped.is_file() else path


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_folder(folder) -> dict:
    """{relative path: sha256} of every file under `folder`."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def weights_sha256(folder) -> str:
    """One digest over all weight files of a model folder (names and contents)."""
    digest = hashlib.sha256()
    for name, file_hash in sha256_folder(folder).items():
        if name.endswith(".safetensors"):
            digest.update(f"{name}:{file_hash}\n".encode())
    return digest.hexdigest()


def record_in_manifest(name: str, entry: dict) -> None:
    """Add or replace one embedded model's entry (recipe, seed, hashes, metrics) in the manifest."""
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
    manifest[name] = {**entry, "sha256": sha256_folder(ASSETS / name)}
    MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def cache_dir() -> Path:
    return Path(os.environ.get("DIFFUNLEARN_CACHE", Path.home() / ".cache" / "diffunlearn"))
