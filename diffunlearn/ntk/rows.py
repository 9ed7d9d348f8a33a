"""Rows of the linearised least-squares problem and their sufficient statistics.

For a set of N samples the linearised fine-tune is ridge regression with design X and targets -R:
- subset "head": X = [phi, 1] (N, F+1), R = residuals (N, C); the C classes decouple (J = I_C kron [phi; 1]), so
  one (F+1)-square system serves C right-hand sides. No autograd: phi comes from a forward hook on the head.
- any other subset: X = G (N*C, P) stacks the per-sample Jacobians d f / d w_S (rows ordered sample, class), R the
  residuals (N*C, 1); Jacobians come from `vmap(jacrev(...))` over `functional_call`, model in eval mode.
Residuals at w0: softmax(f) - onehot(y) for cross-entropy, f - onehot(y) for squared loss.

Output curvature of cross-entropy (`curvature`): the closed form is a Gauss-Newton step from w0, whose metric on the
logits is the loss Hessian. "identity" takes it to be I (the reference code; exact for squared loss). "uniform"
takes the cross-entropy Hessian diag(p) - p p^T at uniform predictions, H = (I - 11^T / C) / C, which is exact when
the head at w0 predicts uniformly (init="zeros"). With H = P / C (P the class-centring projection, P r = r for
cross-entropy residuals), rows become P J / sqrt(C) and residuals sqrt(C) r: same right-hand side G^T r, a Gram
matrix G^T (I kron H) G. Under "identity" the step is ~C times too short and barely moves a trained head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch.func import functional_call, jacrev, vmap

from ..errors import UserError

LOSSES = ("ce", "mse")
CURVATURES = ("uniform", "identity")


def model_logits(output) -> torch.Tensor:
    """Logits from a plain tensor output or a transformers output object with `.logits`."""
    return getattr(output, "logits", output)


def residuals(logits: torch.Tensor, labels: torch.Tensor, loss: str, probs=None) -> torch.Tensor:
    """(B, C) float64 residuals at the linearisation point (`probs`: the logits' softmax, if already taken)."""
    onehot = torch.nn.functional.one_hot(labels, logits.shape[-1]).to(torch.float64)
    if loss != "ce":
        return logits.to(torch.float64) - onehot
    return (logits.to(torch.float64).softmax(-1) if probs is None else probs) - onehot


def fisher_weights(logits: torch.Tensor, loss: str, probs=None) -> torch.Tensor:
    """Per (sample, class) weights of the diagonal Fisher: p(1-p) for cross-entropy, 1 for squared loss.

    For cross-entropy, E_{y~p} (J^T (p - e_y))^2 reduces to p_c (1 - p_c) x_j^2 when the classes decouple.
    """
    if loss != "ce":
        return torch.ones_like(logits, dtype=torch.float64)
    probs = logits.double().softmax(-1) if probs is None else probs
    return probs * (1 - probs)


@dataclass
class Statistics:
    """Sufficient statistics of one set: A = X^T X (P, P), b = X^T R (P, k), Fisher sum (P, k) or None (not
    computed), N, float64.

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


class _Rows:
    """Common part: input casting, label checks, a count of samples whose rows were computed, the curvature."""

    def __init__(self, model, num_classes: int, loss: str, curvature: str = "uniform", precision: str = "float64"):
        self.model, self.num_classes, self.loss = model, num_classes, loss
        self.with_fisher = True  # False: rows skip the Fisher (only Fisher noise needs it), statistics hold None
        self.work_dtype = getattr(torch, precision)  # of the rows and their products; statistics stay float64
        self.uniform = loss == "ce" and curvature == "uniform"  # Gauss-Newton metric H = (I - 11^T/C) / C
        self.row_scale = num_classes ** -0.5 if self.uniform else 1.0  # rows * C^-1/2, residuals * C^1/2
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.samples_computed = 0

    def _inputs(self, images: torch.Tensor, labels: torch.Tensor):
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise UserError(f"label {int(labels.max()) if int(labels.max()) >= self.num_classes else int(labels.min())}"
                            f" is out of range; the model has {self.num_classes} classes (0..{self.num_classes - 1})")
        self.samples_computed += len(labels)
        images = images.to(self.device, self.dtype if images.is_floating_point() else None)
        return images, labels.to(self.device)


class HeadRows(_Rows):
    """Rows [phi, 1] of the head-only problem; k = C right-hand sides."""

    def __init__(self, model, head, init, num_classes: int, loss: str, curvature: str = "uniform",
                 precision: str = "float64"):
        super().__init__(model, num_classes, loss, curvature, precision)
        self.head, self.has_bias = head, head.bias is not None
        self.num_params, self.num_rhs = head.in_features + int(self.has_bias), num_classes
        self.theta0 = None if init is None else self.to_theta(*(init[n] for n in self.param_names()))
        self.checked = False

    def param_names(self) -> list:
        """Names of the head's weight (and bias) in the model."""
        by_id = {id(p): n for n, p in self.model.named_parameters()}
        return [by_id[id(p)] for p in (self.head.weight, self.head.bias) if p is not None]

    def to_theta(self, weight, bias=None) -> torch.Tensor:
        """Head weights -> (P, C) float64, column c = [W_c, b_c]."""
        theta = weight.detach().double().T
        return theta if bias is None else torch.cat([theta, bias.detach().double()[None]])

    def flatten(self, tensors: dict) -> torch.Tensor:
        return self.to_theta(*(tensors[n] for n in self.param_names()))

    def unflatten(self, theta: torch.Tensor) -> dict:
        names, features = self.param_names(), self.head.in_features
        out = {names[0]: theta[:features].T}
        if self.has_bias:
            out[names[1]] = theta[features]
        return out

    def __call__(self, images, labels):
        images, labels = self._inputs(images, labels)
        captured = []
        handle = self.head.register_forward_hook(lambda m, args, out: captured.append((args[0], out)))
        try:
            with torch.no_grad():
                logits = model_logits(self.model(images))
        finally:
            handle.remove()
        if not self.checked and (len(captured) != 1 or captured[0][0].ndim != 2 or
                                 captured[0][1].shape != logits.shape or
                                 not torch.allclose(captured[0][1], logits, rtol=1e-4, atol=1e-5)):
            raise UserError(f"the head of {type(self.model).__name__} is not its final layer (it ran "
                            f"{len(captured)} time(s) or its output differs from the logits); use a parameter "
                            "subset other than 'head'")
        self.checked = True  # the head's place in the model is checked once, on the first batch
        phi = captured[0][0].to(self.work_dtype)
        design = torch.cat([phi, torch.ones_like(phi[:, :1])], 1) if self.has_bias else phi
        logits0 = logits if self.theta0 is None else design.double() @ self.theta0.to(design.device)
        probs = logits0.double().softmax(-1) if self.loss == "ce" else None
        fisher = (design.square().T @ fisher_weights(logits0, self.loss, probs).to(self.work_dtype)).double() \
            if self.with_fisher else None
        # the classes decouple: centring P acts on the C right-hand sides, whose residuals are already centred
        target = residuals(logits0, labels, self.loss, probs) / self.row_scale
        return design * self.row_scale, target.to(self.work_dtype), fisher


class JacobianRows(_Rows):
    """Rows d f_c(x_i) / d w_S (N*C, P) via torch.func, in the fixed `names` order; k = 1."""

    def __init__(self, model, names: list, init, num_classes: int, loss: str, chunk_size=None,
                 curvature: str = "uniform", precision: str = "float64"):
        super().__init__(model, num_classes, loss, curvature, precision)
        params = dict(model.named_parameters())
        self.names, self.chunk_size = list(names), chunk_size
        self.primals = {n: (params[n] if init is None else init[n]).detach() for n in self.names}
        self.num_params, self.num_rhs = sum(p.numel() for p in self.primals.values()), 1

    def flatten(self, tensors: dict) -> torch.Tensor:
        return torch.cat([tensors[n].detach().double().reshape(-1) for n in self.names])[:, None]

    def unflatten(self, theta: torch.Tensor) -> dict:
        sizes = [self.primals[n].numel() for n in self.names]
        return {n: part.reshape(self.primals[n].shape) for n, part in zip(self.names, theta[:, 0].split(sizes))}

    def _logits_one(self, primals, image):
        out = model_logits(functional_call(self.model, primals, (image.unsqueeze(0),))).squeeze(0)
        return out, out

    def jacobians(self, images):
        """(B, C, P) Jacobians and (B, C) logits at w0."""
        with torch.no_grad():  # torch.func transforms ignore the outer no_grad; frozen weights build no graph
            jac, logits = vmap(jacrev(self._logits_one, has_aux=True), in_dims=(None, 0),
                               chunk_size=self.chunk_size)(self.primals, images)
        return torch.cat([jac[n].reshape(len(images), logits.shape[-1], -1) for n in self.names], 2), logits

    def __call__(self, images, labels):
        images, labels = self._inputs(images, labels)
        jac, logits = self.jacobians(images)
        jac = jac.to(self.work_dtype)
        res = residuals(logits, labels, self.loss)
        if not self.with_fisher:
            fisher = None
        elif self.loss == "ce":  # sum_y p_y (J^T (p - e_y))^2 = sum_c p_c J_c^2 - (sum_c p_c J_c)^2, per parameter
            probs = logits.to(self.work_dtype).softmax(-1)
            fisher = (torch.einsum("bc,bcp->p", probs, jac.square())
                      - torch.einsum("bc,bcp->bp", probs, jac).square().sum(0))
        else:
            fisher = jac.square().sum((0, 1))
        if self.uniform:
            jac = (jac - jac.mean(1, keepdim=True)) * self.row_scale
        return (jac.reshape(-1, self.num_params), (res / self.row_scale).reshape(-1, 1).to(self.work_dtype),
                None if fisher is None else fisher.double()[:, None])


BLOCK_BYTES = 1 << 23  # rows gathered (8 MiB, one reused buffer) before one product updates the statistics


def accumulate(rows, batches) -> Statistics:
    """Stream A = X^T X and b = X^T R over mini-batches, accumulated in float64; X itself is never kept.

    The rows of consecutive batches are copied into one reused buffer of up to `BLOCK_BYTES`, and each full buffer
    updates A and b with one product [X R]^T [X R] in the rows' precision (float32 products are added to the
    float64 sums), of which only three half-width blocks are computed (it is symmetric): few large products, 3/4 of
    the multiplications, no fresh allocation per batch.
    """
    p, width = rows.num_params, rows.num_params + rows.num_rhs
    moments = torch.zeros(width, width, dtype=torch.float64, device=rows.device)  # [X R]^T [X R]
    fisher = torch.zeros(p, rows.num_rhs, dtype=torch.float64, device=rows.device) if rows.with_fisher else None
    limit = max(1, BLOCK_BYTES // (width * torch.tensor([], dtype=rows.work_dtype).element_size()))
    buffer, filled, count = None, 0, 0

    half = width // 2

    def flush(block):  # the symmetric product as three of its four half-width blocks
        for rows_, cols in ((slice(0, half), slice(0, half)), (slice(0, half), slice(half, width)),
                            (slice(half, width), slice(half, width))):
            left, right = block[:, rows_], block[:, cols]
            if block.dtype == torch.float64:
                moments[rows_, cols].addmm_(left.T, right)
            else:
                moments[rows_, cols].add_(left.T @ right)

    for images, labels in batches:
        design, target, batch_fisher = rows(images, labels)
        if fisher is not None:
            fisher += batch_fisher
        count += len(labels)
        if len(design) >= limit:  # a batch as large as the buffer: its own product
            flush(torch.cat([design, target], 1))
            continue
        if buffer is None:
            buffer = torch.empty(limit, width, dtype=design.dtype, device=design.device)
        if filled + len(design) > limit:
            flush(buffer[:filled])
            filled = 0
        buffer[filled:filled + len(design), :p] = design
        buffer[filled:filled + len(design), p:] = target
        filled += len(design)
    if filled:
        flush(buffer[:filled])
    moments[half:, :half] = moments[:half, half:].T
    return Statistics(moments[:p, :p].clone(), moments[:p, p:].clone(), fisher, count)


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
