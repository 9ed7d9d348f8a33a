"""Sufficient statistics of the linearised problem over a set, streamed from its rows (`diffunlearn.ntk.rows`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch


@dataclass
class Statistics:
    """Sufficient statistics of one set: A = X^T X (P, P), b = X^T R (P, k), Fisher sum (P, k) or None (not
    computed), N, float64. Only A's lower triangle is computed (the Cholesky solves read no more); its strictly upper
    part holds zeros or partial sums.

    `solved` memoises ridge solutions {lambda: (theta, jitter)} of a cached set (kept in memory only).
    """

    gram: torch.Tensor
    rhs: torch.Tensor
    fisher: Optional[torch.Tensor]
    count: int
    solved: dict = field(default_factory=dict, repr=False, compare=False)

    def __add__(self, other: "Statistics") -> "Statistics":
        fisher = None if self.fisher is None or other.fisher is None else self.fisher + other.fisher
        return Statistics(self.gram + other.gram, self.rhs + other.rhs, fisher, self.count + other.count)

    def __sub__(self, other: "Statistics") -> "Statistics":
        fisher = None if self.fisher is None or other.fisher is None else self.fisher - other.fisher
        return Statistics(self.gram - other.gram, self.rhs - other.rhs, fisher, self.count - other.count)


CPU_SYRK = True  # False: the device path (three half-width GEMM blocks) on the CPU too (tests compare both)
BLOCK_BYTES = 1 << 24  # rows gathered (16 MiB, one reused buffer) before one product updates the statistics


def accumulate(rows, batches) -> Statistics:
    """Stream A = X^T X and b = X^T R over mini-batches, accumulated in float64; X itself is never kept.

    The rows of consecutive batches are written into one reused buffer of up to `BLOCK_BYTES` (`rows.fill`), and
    each full buffer updates A and b with one product [X R]^T [X R] in the rows' precision (float32 products are
    added to the float64 sums). The product is symmetric: on the CPU, BLAS syrk computes its lower triangle (half
    the multiplications); elsewhere three of its four half-width blocks (3/4); nothing is mirrored (b is read from
    the lower block R^T X). Few large products, no fresh allocation per batch. The curvature's scale of A
    (`rows.gram_scale`) is the products' alpha, taken back out of b.
    """
    p, width = rows.num_params, rows.num_params + rows.num_rhs
    moments = torch.zeros(width, width, dtype=torch.float64, device=rows.device)  # [X R]^T [X R]
    fisher = torch.zeros(p, rows.num_rhs, dtype=torch.float64, device=rows.device) if rows.with_fisher else None
    limit = max(1, BLOCK_BYTES // (width * torch.tensor([], dtype=rows.work_dtype).element_size()))
    buffer, filled, count = None, 0, 0

    half, use_syrk, alpha = width // 2, CPU_SYRK and rows.device.type == "cpu", rows.gram_scale

    def flush(block):  # the symmetric product: CPU BLAS syrk (lower triangle), else three of four half blocks
        block_fisher = rows.finish(block)
        if block_fisher is not None and fisher is not None:
            fisher.add_(block_fisher)
        if use_syrk:
            from scipy.linalg import blas

            # syrk on the Fortran-ordered block.T: the upper triangle of the Fortran-ordered result is the lower
            # triangle of the C-ordered one; float64 accumulates in place (beta 1), float32 is added
            if block.dtype == torch.float64:
                out = blas.dsyrk(alpha, block.numpy().T, beta=1.0, c=moments.numpy().T, trans=0, overwrite_c=True)
                if not np.shares_memory(out, moments.numpy()):  # f2py worked on a copy: take its result
                    moments.copy_(torch.from_numpy(out.T))
            else:
                moments.add_(torch.from_numpy(blas.ssyrk(alpha, block.numpy().T, trans=0).T))
            return
        for rows_, cols in ((slice(0, half), slice(0, half)), (slice(half, width), slice(0, half)),
                            (slice(half, width), slice(half, width))):
            left, right = block[:, rows_], block[:, cols]
            if block.dtype == torch.float64:
                moments[rows_, cols].addmm_(left.T, right, alpha=alpha)
            else:
                moments[rows_, cols].add_(left.T @ right, alpha=alpha)

    for images, labels in batches:
        size = len(labels) * rows.rows_per_sample
        if size > limit:  # a batch larger than the buffer: its own block and product
            block = torch.empty(size, width, dtype=rows.work_dtype, device=rows.device)
            batch_fisher = rows.fill(images, labels, block)
            flush(block)
        else:
            if buffer is None:  # sized to the set when it is smaller (fewer fresh pages to touch)
                buffer = torch.empty(min(limit, len(batches) * rows.rows_per_sample), width, dtype=rows.work_dtype,
                                     device=rows.device)
            if filled + size > limit:
                flush(buffer[:filled])
                filled = 0
            batch_fisher = rows.fill(images, labels, buffer[filled:filled + size])
            filled += size
        if fisher is not None and batch_fisher is not None:
            fisher += batch_fisher
        count += len(labels)
    if filled:
        flush(buffer[:filled])
    rhs = moments[p:, :p].T if alpha == 1.0 else moments[p:, :p].T / alpha
    return Statistics(moments[:p, :p], rhs, fisher, count)  # a view: no copy of the P x P block


def collect(rows, batches):
    """All rows of a set (dual form): design (M, P), residuals (M, k), Fisher sum (P, k), N."""
    parts, fisher, count = [], torch.zeros(rows.num_params, rows.num_rhs, dtype=torch.float64), 0
    for images, labels in batches:
        design, target, f = rows(images, labels)
        parts.append((design, target))
        fisher = None if f is None else fisher.to(f.device) + f
        count += len(labels)
    empty = (torch.zeros(0, rows.num_params, dtype=rows.work_dtype),
             torch.zeros(0, rows.num_rhs, dtype=rows.work_dtype))
    design, target = (torch.cat(t) for t in zip(*parts)) if parts else empty
    return design, target, fisher, count
