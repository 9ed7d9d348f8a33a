"""The set digest (Fast-NTK's cache key of D, `diffunlearn.data.digest`) against an independent recomputation with
hashlib; what changes it and what does not; no private torch ops anywhere in the package."""

import hashlib
import re
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from diffunlearn.data import batches
from diffunlearn.data import digest as digests


def digest_of(*parts, batch_size=16):
    return digests.multiset_digest(*(batches.LabeledBatches(p, batch_size, "s") for p in parts))


def recomputed(images: torch.Tensor, labels: torch.Tensor) -> str:
    """The documented digest, recomputed here with hashlib on each sample's raw bytes (numpy's, not torch's view):
    SHA-256 per sample of (tag, dtype, shape, label as <i8, bytes); SHA-256 of (tag, count, the sorted digests)."""
    header = f"diffunlearn.data.digest/sample/v1\n{images.dtype} {tuple(images.shape[1:])}\n".encode()
    samples = sorted(hashlib.sha256(header + struct.pack("<q", int(label)) + image.numpy().tobytes()).digest()
                     for image, label in zip(images, labels))
    return hashlib.sha256(b"diffunlearn.data.digest/multiset/v1\n" + struct.pack("<Q", len(samples))
                          + b"".join(samples)).hexdigest()


class ListSet(torch.utils.data.Dataset):
    """The same samples as a Dataset of (image, label) items: read batch by batch, not from tensors."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


@pytest.mark.parametrize("shape", [(3, 8, 8), (3, 100, 60)])  # 768 B and 72,000 B per sample
def test_the_set_digest_is_sha256_of_the_sorted_sample_digests_and_ignores_order_and_split(shape):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, *shape, generator=gen), torch.arange(40) % 7
    base = digest_of((x, y))
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert base == recomputed(x, y), "not the documented SHA-256 construction"
    perm = torch.randperm(40, generator=gen)
    assert digest_of((x[perm], y[perm])) == base
    assert digest_of((x[:15], y[:15]), (x[15:], y[15:])) == base == digest_of((x[15:], y[15:]), (x[:15], y[:15]))
    assert digest_of((x, y), batch_size=3) == base == digest_of(ListSet(x, y), batch_size=7)  # other batchings
    streamed = digests.MultisetDigest()  # batches fed in any order and split: the same digest
    for part in (perm[30:], perm[:7], perm[7:30], perm[:0]):
        streamed.update(x[part], y[part])
    assert streamed.count == 40 and streamed.hexdigest() == base
    strided = torch.randn(*reversed(shape), 40, generator=gen).permute(3, 2, 1, 0)  # a non-contiguous set
    assert not strided.is_contiguous() and digest_of((strided, y)) == digest_of((strided.contiguous(), y))
    assert digest_of((strided, y)) == recomputed(strided.contiguous(), y)


def test_the_set_digest_changes_with_any_label_byte_dtype_shape_or_multiplicity():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 3, 8, 8, generator=gen), torch.arange(40) % 7
    base = digest_of((x, y))
    y_swap = y.clone()
    y_swap[[0, 1]] = y[[1, 0]]  # two samples' labels swapped: same labels overall, other pairs
    x_swap = x.clone()
    x_swap[0, 0, 0, 0], x_swap[1, 0, 0, 0] = x[1, 0, 0, 0], x[0, 0, 0, 0]  # a pixel swapped between two samples
    x_pixel = x.clone()
    x_pixel[3, 2, 7, 7] += 0.5
    x_ulp = x.clone()
    x_ulp[5, 1, 2, 3] = torch.nextafter(x[5, 1, 2, 3], torch.tensor(1e9))
    x_zero = x.clone()
    x_zero[9, 0, 0, 0] = -0.0 if x[9, 0, 0, 0] == 0 else 0.0
    x_negzero = x_zero.clone()
    x_negzero[9, 0, 0, 0] = -x_zero[9, 0, 0, 0]  # 0.0 and -0.0: equal values, different bytes
    variants = {
        "label swap": (x, y_swap), "pixel swap": (x_swap, y), "pixel": (x_pixel, y), "one ulp": (x_ulp, y),
        "signed zero a": (x_zero, y), "signed zero b": (x_negzero, y),
        "duplicate": (torch.cat([x, x[:1]]), torch.cat([y, y[:1]])), "dropped": (x[1:], y[1:]),
        "float64": (x.double(), y), "bfloat16": (x.bfloat16(), y),
        "shape (same bytes)": (x.reshape(40, 3, 64), y), "shape flat": (x.reshape(40, -1), y),
        "label value": (x, torch.where(y == 6, 7, y))}
    found = {name: digest_of(data) for name, data in variants.items()}
    assert len({base, *found.values()}) == 1 + len(found), "two different multisets share a digest"
    for name, (images, labels) in variants.items():
        if images.dtype != torch.bfloat16:  # numpy has no bfloat16 for the recomputation
            assert found[name] == recomputed(images, labels), name
    assert digest_of((x[:0], y[:0])) == recomputed(x[:0], y[:0]) != digest_of((x[:1], y[:1]))  # the empty set


def test_the_statistics_key_is_a_whole_sha256_and_follows_the_data_digest():
    from diffunlearn.ntk.cache import FORMAT_VERSION, statistics_key

    model = nn.Linear(4, 3)
    key = statistics_key(model, ["weight", "bias"], None, "ce/uniform", "a" * 64)
    assert FORMAT_VERSION >= 3 and re.fullmatch(r"[0-9a-f]{64}", key)  # 3: older cache files simply miss
    assert statistics_key(model, ["weight", "bias"], None, "ce/uniform", "b" * 64) != key
    assert statistics_key(model, ["weight", "bias"], None, "ce/uniform", "a" * 64) == key


PRIVATE_TORCH = re.compile(r"\btorch(\.\w+)*\._(?!_)"  # torch._int_mm, torch.ops.aten._x, import torch._C
                           r"|\bfrom\s+torch(\.\w+)*\s+import\s+[\w\s,(]*\b_(?!_)"  # from torch.x import y, _z
                           r"|\bgetattr\(\s*torch[\w.]*\s*,\s*[\"']_(?!_)")  # getattr(torch, "_int_mm")


def test_no_private_torch_op_is_used_in_the_package():
    """No `torch._...` name (private ops such as torch._int_mm, torch._C, torch.ops.aten._...) in diffunlearn/; the
    pattern leaves dunders (torch.__version__) alone."""
    for text in ("torch._int_mm(a, b)", "torch.ops.aten._int_mm", "from torch._dynamo import x", "import torch._C",
                 "from torch.nn.functional import _pad",
                 "from torch import nn, _C", "getattr(torch.ops.aten, '_int_mm')"):
        assert PRIVATE_TORCH.search(text), text
    for text in ("torch.__version__", "torch.nn.functional.pad(x_, y)", "from torch import nn_x", "torch.float32"):
        assert not PRIVATE_TORCH.search(text), text
    root = Path(digests.__file__).parents[1]
    hits = [f"{path.relative_to(root.parent)}:{number}: {line.strip()}"
            for path in sorted(root.rglob("*.py"))
            for number, line in enumerate(path.read_text().splitlines(), 1) if PRIVATE_TORCH.search(line)]
    assert not hits, "private torch names in the package:\n" + "\n".join(hits)
