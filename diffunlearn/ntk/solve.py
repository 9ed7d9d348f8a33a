"""Ridge solves of the linearised problem, primal or dual, by Cholesky with a jitter retry (never an inverse).

With design X (M, P), residuals R (M, k) and lambda = N * weight_decay, the step from w0 is
    theta = (X^T X + lambda I)^-1 X^T R      (primal, P x P)
          = X^T (X X^T + lambda I)^-1 R      (dual, M x M),
and the linearised fine-tune ends at w_lin = w0 - theta.
"""

from __future__ import annotations

import torch

from ..errors import UserError

JITTERS = (0.0, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2)


def cholesky_solve(matrix: torch.Tensor, rhs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Solve `matrix @ x = rhs` for a symmetric positive (semi-)definite `matrix` given by its lower triangle, which
    it may modify in place.

    On a failed factorisation, adds eps * mean(diag) to the diagonal, eps in `JITTERS`.

    Returns:
        (x, the jitter added).
    """
    scale, added = float(matrix.diagonal().mean().abs()) or 1.0, 0.0
    for eps in JITTERS:
        matrix.diagonal().add_(eps * scale - added)
        added = eps * scale
        factor, info = torch.linalg.cholesky_ex(matrix)
        if int(info) == 0:  # two triangular solves: about half the time of torch.cholesky_solve here
            inner = torch.linalg.solve_triangular(factor, rhs, upper=False)
            return torch.linalg.solve_triangular(factor.mT, inner, upper=True), added
    raise UserError("the linearised system is singular even with jitter; use weight_decay > 0")


def ridge_primal(gram: torch.Tensor, rhs: torch.Tensor, lam: float, count: int,
                 overwrite: bool = False) -> tuple[torch.Tensor, float]:
    """theta (P, k) from A = X^T X (P, P; its lower triangle is read) and b = X^T R (P, k); zero for an empty set.
    `overwrite`: `gram` is not needed afterwards and may be used as the work matrix (no copy)."""
    if count == 0:
        return torch.zeros_like(rhs), 0.0
    system = gram if overwrite else gram.clone()
    system.diagonal().add_(lam)
    return cholesky_solve(system, rhs)


def ridge_dual(design: torch.Tensor, target: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """theta (P, k) from the rows X (M, P) and R (M, k) through the (M, M) kernel; zero for an empty set."""
    if len(design) == 0:
        return torch.zeros(design.shape[1], target.shape[1], dtype=torch.float64, device=design.device), 0.0
    kernel = (design @ design.T).double()  # float32 rows: float32 products, a float64 solve
    kernel.diagonal().add_(lam)
    alpha, jitter = cholesky_solve(kernel, target.double())
    return design.double().T @ alpha, jitter
