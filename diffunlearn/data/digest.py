"""Digests of labelled sets (`diffunlearn.data.batches.LabeledBatches`): the cache key of Fast-NTK's statistics;
and `hash_tensor`, a tensor fed to a hashlib digest (the cache keys of models and masks).

`multiset_digest(*sets)` identifies the multiset of (image, label) samples of the union of `sets`: independent of
order and of how the samples are split between the sets or into batches. `MultisetDigest` computes the same digest
from batches fed in any order.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch

from ..distributed import full_tensor

HASH_COLUMNS = 16  # independent linear hashes per sample (int32 each; packed in pairs into 8 uint64 words)
CHUNK_BYTES = 1 << 16  # bytes hashed by one exact product: |sum| <= 2^16 * 2^7 * 2^6 = 2^29 fits int32
HASH_BYTES = 1 << 24  # bytes of images hashed per call when the set is in memory
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
FOLD_ROWS = 1 << 14  # samples whose hashes are mixed and summed at once
_LANES = np.arange(1, HASH_COLUMNS // 2 + 1, dtype=np.uint64)  # binds the label to each word differently


@functools.lru_cache(maxsize=1)
def _coefficients() -> torch.Tensor:
    """Fixed random multipliers (CHUNK_BYTES, HASH_COLUMNS) in [-64, 64), int8 (seeded); a sample of b bytes uses
    the first b rows. Seven bits: CPU int8 kernels without VNNI add pairs of u8 x s8 products in int16 with
    saturation, which |a| <= 64 never reaches (2 * 255 * 64 < 2^15)."""
    generator = torch.Generator().manual_seed(0x5EED)
    return torch.randint(-64, 64, (CHUNK_BYTES, HASH_COLUMNS), dtype=torch.int8, generator=generator)


@functools.lru_cache(maxsize=1)
def _integer_products_exact() -> bool:
    """Whether torch's CPU int8 product is available and exact here (checked once, extreme bytes included)."""
    generator = torch.Generator().manual_seed(1)
    data = torch.randint(-128, 128, (34, 4096), dtype=torch.int8, generator=generator)
    data[0], data[1] = -128, 127
    coefficients = _coefficients()[:4096]
    try:
        return torch.equal(torch._int_mm(data, coefficients).long(), data.long() @ coefficients.long())
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _exact_products(data: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """(n, b) int8 @ (b, k) int8 -> (n, k) int32, exact: integer products (torch._int_mm, no conversion of the
    data), or else float64 products of the same integers (exact: every partial sum is below 2^53)."""
    if _integer_products_exact():
        try:
            return torch._int_mm(data, coefficients)
        except RuntimeError:  # a shape this build's kernel refuses: the fallback gives the same integers
            pass
    return (data.double() @ coefficients.double()).to(torch.int32)


def image_hashes(images: torch.Tensor) -> np.ndarray:
    """(n, HASH_COLUMNS // 2) uint64 hashes of each sample's bytes.

    The bytes are read as signed 8-bit integers u (|u| <= 2^7) and hashed as sum_j u_j a_j with fixed multipliers
    -64 <= a_j < 64: integer arithmetic, exact, so a sample's hashes do not depend on its batch or the kernel. Two
    distinct samples agree on one column with probability <= 2^-7 (for a differing byte j, one value of a_j of 128
    solves it), on all 16 with <= 2^-112; the int32 columns are packed in pairs into uint64 words. Samples
    over `CHUNK_BYTES` are hashed in chunks, whose hashes are digested with blake2b. A cache key, not a
    cryptographic digest.
    """
    flat = images.detach().cpu().reshape(len(images), -1)
    flat = flat.contiguous().view(torch.int8) if flat.dtype != torch.int8 else flat.contiguous()
    if flat.shape[1] <= CHUNK_BYTES:
        return _exact_products(flat, _coefficients()[:flat.shape[1]]).view(torch.int64).numpy().view(np.uint64)
    flat = torch.nn.functional.pad(flat, (0, -flat.shape[1] % CHUNK_BYTES)).reshape(-1, CHUNK_BYTES)
    chunks = _exact_products(flat, _coefficients()).reshape(len(images), -1).numpy()
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
        self.sums, self.count, self.shapes = np.zeros(HASH_COLUMNS // 2, dtype=np.uint64), 0, set()
        self.pending = []  # (hashes, labels) not yet mixed into the sums: mixed in bulk (fewer small array ops)

    def update(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(labels) == 0:
            return
        self.pending.append((image_hashes(images), labels.cpu().numpy()))
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


def hash_tensor(digest, tensor: torch.Tensor) -> None:
    """Feed `tensor`'s dtype, shape and bytes to the hashlib `digest`, without a bytes copy (a DTensor is gathered
    whole: every process must call it)."""
    tensor = full_tensor(tensor).detach()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.cpu().contiguous().flatten().view(torch.uint8).numpy())
