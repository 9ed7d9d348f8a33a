"""Digests of labelled sets (`diffunlearn.data.batches.LabeledBatches`): the cache key of Fast-NTK's statistics.

`multiset_digest(*sets)` identifies the multiset of (image, label) samples of the union of `sets`: independent of
order and of how the samples are split between the sets or into batches. `MultisetDigest` computes the same digest
from batches fed in any order.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch

HASH_COLUMNS = 8  # independent linear hashes per sample
HASH_BYTES = 1 << 24  # bytes of images hashed per call when the set is in memory
CONVERT_BYTES = 1 << 19  # float64 words converted at a time: a block that stays in the core's cache
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
FOLD_ROWS = 1 << 14  # samples whose hashes are mixed and summed at once
_LANES = np.arange(1, HASH_COLUMNS + 1, dtype=np.uint64)  # binds the label to each column differently


@functools.lru_cache(maxsize=4)
def _coefficients(words: int) -> np.ndarray:
    """Fixed random multipliers (words, HASH_COLUMNS) in [0, 2^12), float64 (seeded by the word count)."""
    generator = torch.Generator().manual_seed(0x5EED + words)
    return torch.randint(1 << 12, (words, HASH_COLUMNS), generator=generator).double().numpy()


def _linear_hashes(words: np.ndarray, buffer=None) -> np.ndarray:
    """(n, w) int32 words @ `_coefficients(w)`, exact in float64, converted block by block into one reused buffer
    (no n x w float64 copy; `buffer`: a float64 array of `CONVERT_BYTES` to reuse across calls)."""
    coefficients, out = _coefficients(words.shape[1]), np.empty((len(words), HASH_COLUMNS))
    step = max(1, CONVERT_BYTES // (8 * words.shape[1]))
    size = min(step, len(words)) * words.shape[1]
    buffer = np.empty(size) if buffer is None or buffer.size < size else buffer
    for start in range(0, len(words), step):
        part = buffer[:len(words[start:start + step]) * words.shape[1]].reshape(-1, words.shape[1])
        part[...] = words[start:start + step]
        np.matmul(part, coefficients, out=out[start:start + step])
    return out


def image_hashes(images: torch.Tensor, buffer=None) -> np.ndarray:
    """(n, HASH_COLUMNS) uint64 hashes of each sample's bytes.

    The bytes are read as signed 32-bit words w (|w| <= 2^31) and hashed as sum_j w_j a_j with fixed multipliers
    0 <= a_j < 2^12: every product and partial sum is an integer below 2^52 in magnitude (for up to 2^9 words, 2 KiB
    per sample), exact in float64 whatever the summation order, so a sample's hashes do not depend on its batch or
    the BLAS. Distinct samples share all columns with probability < 2^-96 per pair (each column is a 2^-12 event).
    Longer samples are hashed in chunks of 2^9 words and their chunk hashes digested with blake2b. A cache key, not
    a cryptographic digest.
    """
    flat = np.ascontiguousarray(images.detach().cpu().reshape(len(images), -1).numpy())
    if flat.itemsize != 4:
        flat = flat.view(np.uint8)
        flat = np.pad(flat, ((0, 0), (0, -flat.shape[1] % 4))) if flat.shape[1] % 4 else flat
    flat = flat.view(np.int32)
    words = flat.shape[1]
    if words <= 512:
        return _linear_hashes(flat, buffer).astype(np.int64).view(np.uint64)
    flat = np.pad(flat, ((0, 0), (0, -words % 512))).reshape(-1, 512)
    chunks = _linear_hashes(flat, buffer).astype(np.int64).reshape(len(images), -1)
    return np.stack([np.frombuffer(hashlib.blake2b(c.tobytes()).digest(), "<u8") for c in chunks])


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on uint64 (wrapping arithmetic): a bijection that spreads every bit."""
    z ^= z >> np.uint64(30)
    z *= _MIX[0]
    z ^= z >> np.uint64(27)
    z *= _MIX[1]
    z ^= z >> np.uint64(31)
    return z


class MultisetDigest:
    """The digest of a multiset of labelled samples, fed batch by batch in any order and split.

    Each sample's hash columns are bound to its label (each column xor a different mix of the label), mixed, and
    summed over the samples modulo 2^64, column by column: a sum does not see order, and mixing first makes it no
    longer linear in the images (a swap of pixels or labels between two samples changes it). O(N), no sort.
    """

    def __init__(self):
        self.sums, self.count, self.shapes = np.zeros(HASH_COLUMNS, dtype=np.uint64), 0, set()
        self.buffer = np.empty(CONVERT_BYTES // 8)  # the conversion block, reused by every update
        self.pending = []  # (hashes, labels) not yet mixed into the sums: mixed in bulk (fewer small array ops)

    def update(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(labels) == 0:
            return
        self.pending.append((image_hashes(images, self.buffer), labels.cpu().numpy()))
        self.count += len(labels)
        self.shapes.add(tuple(images.shape[1:]))
        if sum(len(h) for h, _ in self.pending) >= FOLD_ROWS:
            self._fold()

    def _fold(self) -> None:
        if self.pending:
            hashes = np.concatenate([h for h, _ in self.pending])
            labels = np.concatenate([l_ for _, l_ in self.pending]).astype(np.int64).view(np.uint64)
            hashes ^= _mix64(labels[:, None] + _LANES)
            self.sums += _mix64(hashes).sum(0, dtype=np.uint64)
            self.pending = []

    def hexdigest(self) -> str:
        self._fold()
        shapes = sorted(str(shape) for shape in self.shapes)
        return hashlib.sha256(repr((shapes, self.count)).encode() + self.sums.tobytes()).hexdigest()


def multiset_digest(*sets) -> str:
    """Digest of the union of `sets` as a multiset: independent of order and of how it is split between them."""
    digest = MultisetDigest()
    for batches in sets:
        for images, labels in batches.chunks(HASH_BYTES):
            digest.update(images, labels)
    return digest.hexdigest()
