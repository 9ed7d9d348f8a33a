"""Digests of labelled sets (`diffunlearn.data.batches.LabeledBatches`): the cache key of Fast-NTK's statistics
(the other cache keys, and `hash_tensor`, are `diffunlearn.disk_cache`'s).

`multiset_digest(*sets)` identifies the multiset of (image, label) samples of the union of `sets`: independent of
order and of how the samples are split between the sets or into batches. `MultisetDigest` computes the same digest
from batches fed in any order.

Only standard cryptographic hashing (hashlib's SHA-256) over the exact bytes: no home-made hash, no private torch
op. Each sample is hashed on its own, with its dtype, shape and label:

    sample digest = SHA-256(SAMPLE_TAG, dtype, per-sample shape, "\\n", label as 8-byte little-endian int64,
                            the sample's contiguous bytes (native byte order))

and the set is the SHA-256 of its sample digests **sorted** (lexicographically, as bytes), behind a tag and the count:

    set digest = SHA-256(SET_TAG, count as 8-byte little-endian, sorted sample digests (32 bytes each))

Sorting is the canonical order of a multiset: the sorted list is a function of the multiset alone (order and split
drop out, duplicates stay), and the result is a plain hash of an unambiguous byte string, so its collision resistance
is SHA-256's, with no further argument (an order-free sum of digests modulo 2^256 would also drop the order, but its
security rests on a separate argument about sums of hashes; sorting costs O(N log N) comparisons of 32-byte strings,
~1 ms for 5,000 samples). Both messages are unambiguous: the header line holds no newline of its own and fixes the
sample's byte length, so two different (dtype, shape, label, bytes) never give the same message, and the set message
is fixed-size blocks. Hence two different multisets get the same digest only through a SHA-256 collision (two
different sorted lists: a collision of the set hash; the same sorted list: of a sample hash). Treating SHA-256 as a
random function, a collision among q hashed messages has probability <= q^2 / 2^257: below 2^-128 for q = 2^64.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import torch

from ..disk_cache import native_bytes

HASH_BYTES = 1 << 24  # bytes of images hashed per batch when the set is in memory (bounds a contiguous copy)
SAMPLE_TAG = b"diffunlearn.data.digest/sample/v1\n"
SET_TAG = b"diffunlearn.data.digest/multiset/v1\n"
DIGEST_BYTES = hashlib.sha256().digest_size  # 32


def sample_digests(images: torch.Tensor, labels: torch.Tensor) -> list[bytes]:
    """SHA-256 digest (32 bytes) of each labelled sample: its dtype, shape, label and bytes (see the module)."""
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    header = SAMPLE_TAG + f"{images.dtype} {tuple(images.shape[1:])}\n".encode()
    data = memoryview(native_bytes(images).numpy())
    size = len(data) // n if n else 0
    tags = memoryview(np.ascontiguousarray(labels.detach().cpu().numpy(), dtype="<i8").view(np.uint8))
    base, out = hashlib.sha256(header), []
    for i in range(n):  # one hashlib call per sample on views of one buffer: no per-element work in Python
        h = base.copy()
        h.update(tags[8 * i:8 * i + 8])
        h.update(data[size * i:size * (i + 1)])
        out.append(h.digest())
    return out


class MultisetDigest:
    """The digest of a multiset of labelled samples, fed batch by batch in any order and split: each sample's
    SHA-256 digest is kept (32 bytes a sample), and `hexdigest` hashes them sorted (see the module)."""

    def __init__(self):
        self.digests: list[bytes] = []

    @property
    def count(self) -> int:
        return len(self.digests)

    def update(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(labels) or len(images):
            self.digests.extend(sample_digests(images, labels))

    def hexdigest(self) -> str:
        """64 hex digits (SHA-256) of the multiset of samples fed so far."""
        digest = hashlib.sha256(SET_TAG + struct.pack("<Q", len(self.digests)))
        digest.update(b"".join(sorted(self.digests)))
        return digest.hexdigest()


def multiset_digest(*sets) -> str:
    """Digest of the union of `sets` as a multiset: independent of order and of how it is split between them."""
    digest = MultisetDigest()
    for batches in sets:
        for images, labels in batches.chunks(HASH_BYTES):
            digest.update(images, labels)
    return digest.hexdigest()

