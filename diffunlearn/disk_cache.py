"""The on-disk caches under `assets.cache_dir()` (env DIFFUNLEARN_CACHE): one folder per kind, capped in size.

Each kind (`fast_ntk`, `generated`, `masks`, `base_eval`, `rt`) is a `DiskCache`: entries are
`cache_dir()/KIND/KEY+suffix` (a file, or a folder for `folder=True` kinds such as retrained models), KEY a whole
SHA-256 (64 hex digits, `cache_key`) of everything that changes the entry's content. After each write the folder
is trimmed to its cap, least recently used first (an entry's mtime is its last use: `touch` on every hit), never
the entry just written. The cap is the kind's env var (a whole number of bytes; 0 keeps only the newest entry),
else its default.

Keys are plain hashlib SHA-256 over an unambiguous message: the JSON header (sorted keys), then for each tensor its
JSON-quoted name, dtype, shape and exact bytes (`hash_tensor`; the byte length follows from dtype and shape).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from .assets import cache_dir
from .distributed import full_tensor
from .errors import UserError
from .outputs import atomic_write

GiB = 1 << 30


def native_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`'s elements as a flat uint8 CPU tensor (contiguous, native byte order, conjugation and negation
    applied): the exact bytes of its values."""
    flat = tensor.detach().resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8)


def hash_tensor(digest, tensor: torch.Tensor) -> None:
    """Feed `tensor`'s dtype, shape and bytes to the hashlib `digest`, without a bytes copy (a DTensor is gathered
    whole: every process must call it)."""
    tensor = full_tensor(tensor).detach()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(native_bytes(tensor).numpy())


def _plain(value):
    """JSON form of the non-JSON values a config may hold (numpy arrays and scalars, tensors, tuples' items)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-able: give the cache key plain values")


def cache_key(header, tensors: Iterable[tuple[str, torch.Tensor]] = ()) -> str:
    """64 hex digits: SHA-256 of the JSON `header` (sorted keys), then each (name, tensor) of `tensors` as its
    JSON-quoted name and `hash_tensor`. Under FSDP every process must call it (DTensors are gathered)."""
    digest = hashlib.sha256(json.dumps(header, sort_keys=True, default=_plain).encode())
    for name, tensor in tensors:
        digest.update(json.dumps(name).encode())
        hash_tensor(digest, tensor)
    return digest.hexdigest()


def touch(path) -> None:
    """Mark `path` as just used (its mtime): the least recently used entries are trimmed first."""
    try:
        os.utime(path)
    except OSError:  # a read-only cache folder (or an entry another process just trimmed): still read, never trimmed
        pass


def entry_size(path: Path) -> int:
    """Bytes of a cache entry: a file's size, or the sum of a folder entry's files."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def remove_entry(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class DiskCache:
    """One kind of cache entry: the folder `cache_dir()/kind`, capped at `env` bytes (else `default_bytes`);
    `folder=True`: each entry is a folder (written whole under a hidden name, then renamed into place)."""

    kind: str
    env: str
    default_bytes: int
    suffix: str = ".safetensors"
    folder: bool = False

    def path(self, key: str) -> Path:
        return cache_dir() / self.kind / f"{key}{self.suffix}"

    def lookup(self, key: str) -> Optional[Path]:
        """The entry's path when it exists (and marked as used), else None."""
        path = self.path(key)
        if not (path.is_dir() if self.folder else path.is_file()):
            return None
        touch(path)
        return path

    def limit(self) -> int:
        """The folder's total size cap in bytes: the env var `self.env`, else `self.default_bytes`."""
        value = os.environ.get(self.env, "")
        if not value.isdigit():
            if value:
                raise UserError(f"{self.env}={value!r} is invalid; give a whole number of bytes (0 keeps only the "
                                "newest file)")
            return self.default_bytes
        return int(value)

    def store(self, key: str, write, commit: bool = True) -> Path:
        """Write the entry atomically (`write(tmp)` fills a temporary file, `outputs.atomic_write`), then trim the
        folder to `limit()`. `commit=False`: a process that takes part in a collective write but does not own it
        (it keeps nothing and trims nothing)."""
        limit, path = self.limit(), self.path(key)  # a bad env value is refused before the work of writing
        if self.folder:
            self._store_folder(path, write, commit)
        else:
            atomic_write(path, write, commit=commit)
        if commit:
            self.trim(path, limit)
        return path

    @staticmethod
    def _store_folder(path: Path, write, commit: bool) -> None:
        """`write(tmp)` fills a hidden sibling folder, renamed to `path` (a concurrent writer's entry wins;
        `commit=False`: nothing is kept)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            write(tmp)
            if commit and not path.exists():
                os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def trim(self, newest: Path, limit: Optional[int] = None) -> None:
        """Delete the least recently used entries until the folder holds `limit` (default `limit()`) bytes or less;
        `newest` stays."""
        limit = self.limit() if limit is None else limit
        others, total = [], entry_size(newest)
        for path in newest.parent.glob(f"*{self.suffix}"):
            if path.name.startswith("."):  # a writer's hidden temporary
                continue
            try:
                mtime, size = path.stat().st_mtime, entry_size(path)
            except FileNotFoundError:  # another process trimmed it
                continue
            if path != newest:
                others.append((mtime, size, path))
                total += size
        for _, size, path in sorted(others):  # least recently used first
            if total <= limit:
                break
            remove_entry(path)
            total -= size


def scheduler_config(scheduler) -> Optional[dict]:
    """What a diffusers scheduler computes from: its class and its config (timestep spacing, prediction type, betas,
    ...), without diffusers' bookkeeping keys (`_class_name`, `_diffusers_version`, `_name_or_path`,
    `_use_default_values`), which differ between a scheduler built in memory and the same one read from disk;
    None for None."""
    if scheduler is None:
        return None
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    return {"class": type(scheduler).__name__, "config": config}
