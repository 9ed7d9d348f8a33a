"""Statistics of the full set D = retain + forget, kept in memory and on disk, so later requests only downdate.

The key covers everything the statistics depend on: all model weights and buffers, the subset, the loss, the
linearisation point and the identity of D: the multiset of its samples (SHA-256 of each labelled sample, sorted and
hashed: `diffunlearn.data.digest`; order-free, and independent of how D is split into forget and retain), or a
name the caller gives D (skips hashing the data on every request).
Files live under `diffunlearn.assets.cache_dir()/fast_ntk` (env DIFFUNLEARN_CACHE), `DISK_BYTES` in all: after each
write the least recently used files go first (a load from disk counts as a use), the newest is always kept
(`diffunlearn.disk_cache`, shared with the other caches).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ..disk_cache import GiB, DiskCache, cache_key
from .statistics import Statistics

FORMAT_VERSION = 3  # 2: the gram holds X^T X's lower triangle only (the solves read no more); 3: D is identified
# by SHA-256 sample digests, sorted (issue 31), and the key is a whole SHA-256 (64 hex digits): older files miss
MEMORY_ENTRIES = 4
MEMORY_BYTES = 2 << 30  # the in-memory entries' total size cap (P_S^2 float64 each: 1.9 GB at P_S = 15k); the
# newest entry is kept whatever its size
DISK_BYTES = 8 * GiB  # the files' total size cap (ViT-B/16 prompt + head: 1.9 GB per set); env
# DIFFUNLEARN_NTK_CACHE_BYTES overrides it
DISK = DiskCache("fast_ntk", "DIFFUNLEARN_NTK_CACHE_BYTES", DISK_BYTES)
_MEMORY: "OrderedDict[str, Statistics]" = OrderedDict()


def statistics_key(model, subset_names: list, init: Optional[dict], loss: str, data_digest: str) -> str:
    """Hex key (SHA-256, 64 digits) of the statistics of one (model, subset, loss, w0, D). The message is
    unambiguous: a JSON header (with the number of state entries and the names of w0's tensors), then each tensor's
    JSON-quoted name, dtype, shape and bytes (`hash_tensor`; their length follows from dtype and shape)."""
    state = model.state_dict()
    header = [FORMAT_VERSION, type(model).__name__, subset_names, loss, data_digest, init is None, len(state),
              sorted(init or {})]
    return cache_key(header, [*state.items(), *((name, init[name]) for name in sorted(init or {}))])


def _path(key: str):
    return DISK.path(key)


def load_statistics(key: str, device=None) -> tuple[Optional[Statistics], str]:
    """(statistics or None, where they came from: 'memory', 'disk' or 'miss')."""
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        stats = _MEMORY[key]
        where = "memory"
    elif (path := DISK.lookup(key)) is not None:
        tensors = load_file(str(path))
        stats = Statistics(tensors["gram"], tensors["rhs"], tensors.get("fisher"), int(tensors["count"]))
        _remember(key, stats)
        where = "disk"
    else:
        return None, "miss"
    fisher = None if stats.fisher is None else stats.fisher.to(device)
    return Statistics(stats.gram.to(device), stats.rhs.to(device), fisher, stats.count, stats.solved), where


def _nbytes(stats: Statistics) -> int:
    return sum(t.numel() * t.element_size() for t in (stats.gram, stats.rhs, stats.fisher) if t is not None)


def _remember(key: str, stats: Statistics) -> None:
    _MEMORY[key] = stats
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > 1 and (len(_MEMORY) > MEMORY_ENTRIES or
                                sum(_nbytes(entry) for entry in _MEMORY.values()) > MEMORY_BYTES):
        _MEMORY.popitem(last=False)


def store_statistics(key: str, stats: Statistics, disk: bool = True) -> None:
    """Keep `stats` in memory and (atomically) on disk."""
    fisher = None if stats.fisher is None else stats.fisher.cpu()
    cpu = Statistics(stats.gram.cpu(), stats.rhs.cpu(), fisher, stats.count, stats.solved)
    _remember(key, cpu)
    if disk:
        tensors = {"gram": cpu.gram.contiguous(), "rhs": cpu.rhs.contiguous(), "count": torch.tensor(cpu.count),
                   **({} if fisher is None else {"fisher": fisher.contiguous()})}
        DISK.store(key, lambda tmp: save_file(tensors, str(tmp)))


def disk_limit() -> int:
    """The statistics files' total size cap in bytes (DIFFUNLEARN_NTK_CACHE_BYTES, else `DISK_BYTES`)."""
    return DISK.limit()


def clear_memory_cache() -> None:
    """Forget the in-memory statistics (files on disk stay)."""
    _MEMORY.clear()
