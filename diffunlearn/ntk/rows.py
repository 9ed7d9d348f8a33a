"""Rows of the linearised least-squares problem (their sufficient statistics: `diffunlearn.ntk.statistics`).

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

import torch
from torch.func import functional_call, jacrev, vmap

from ..errors import UserError

LOSSES = ("ce", "mse")
CURVATURES = ("uniform", "identity")


def model_logits(output) -> torch.Tensor:
    """Logits from a plain tensor output or a transformers output object with `.logits`."""
    return getattr(output, "logits", output)


def softmax_(z: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, in place (written out: torch's kernel costs ~40 us per small batch)."""
    z.sub_(z.amax(-1, keepdim=True)).exp_()
    return z.div_(z.sum(-1, keepdim=True))


def softmax64(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension in float64, of a copy of `logits`."""
    return softmax_(logits.to(torch.float64, copy=True))


def residuals(logits: torch.Tensor, labels: torch.Tensor, loss: str, probs=None) -> torch.Tensor:
    """(B, C) float64 residuals at the linearisation point (`probs`: the logits' softmax, if already taken)."""
    onehot = torch.nn.functional.one_hot(labels, logits.shape[-1]).to(torch.float64)
    if loss != "ce":
        return logits.to(torch.float64) - onehot
    return (softmax64(logits) if probs is None else probs) - onehot


def fisher_weights(logits: torch.Tensor, loss: str, probs=None) -> torch.Tensor:
    """Per (sample, class) weights of the diagonal Fisher: p(1-p) for cross-entropy, 1 for squared loss.

    For cross-entropy, E_{y~p} (J^T (p - e_y))^2 reduces to p_c (1 - p_c) x_j^2 when the classes decouple.
    """
    if loss != "ce":
        return torch.ones_like(logits, dtype=torch.float64)
    probs = softmax64(logits) if probs is None else probs
    return probs * (1 - probs)


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
        low, high = (int(v) for v in torch.aminmax(labels)) if len(labels) else (0, 0)
        if low < 0 or high >= self.num_classes:
            raise UserError(f"label {high if high >= self.num_classes else low} is out of range; the model has "
                            f"{self.num_classes} classes (0..{self.num_classes - 1})")
        self.samples_computed += len(labels)
        images = images.to(self.device, self.dtype if images.is_floating_point() else None)
        return images, labels.to(self.device)

    def fill(self, images, labels, out: torch.Tensor):
        """Write the batch's rows [X R] into `out` (rows, P + k) in the rows' precision; returns the Fisher sum
        (or None: `finish` returns it)."""
        design, target, fisher = self(images, labels)
        out[:, :self.num_params] = design
        out[:, self.num_params:] = target
        return fisher

    def finish(self, block: torch.Tensor):
        """Complete the rows `fill` wrote into `block` (all of them, in order) before its product; returns the
        Fisher sum of the block, or None when `fill` returned it."""
        return None


class HeadRows(_Rows):
    """Rows [phi, 1] of the head-only problem; k = C right-hand sides."""

    def __init__(self, model, head, init, num_classes: int, loss: str, curvature: str = "uniform",
                 precision: str = "float64"):
        super().__init__(model, num_classes, loss, curvature, precision)
        self.head, self.has_bias = head, head.bias is not None
        self.num_params, self.num_rhs = head.in_features + int(self.has_bias), num_classes
        self.rows_per_sample, self.gram_scale = 1, self.row_scale ** 2
        self.pending = []  # labels of the rows filled since the last finish
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
        out = torch.empty(len(labels), self.num_params + self.num_rhs, dtype=self.work_dtype, device=self.device)
        self.fill(images, labels, out)
        fisher = self.finish(out)
        return out[:, :self.num_params] * self.row_scale, out[:, self.num_params:] / self.row_scale, fisher

    def fill(self, images, labels, out: torch.Tensor):
        """[phi, 1] and the logits at w0 written straight into `out`, one pass over the features; `finish` turns
        the logits of a whole block into residuals. The curvature's row scale is left to `gram_scale` (X^T X *
        C^-1, X^T R unchanged)."""
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
        phi, features = captured[0][0], self.head.in_features
        design = out[:, :self.num_params]
        design[:, :features].copy_(phi)
        if self.has_bias:
            design[:, features].fill_(1.0)
        theta0 = None if self.theta0 is None else self.theta0.to(design.device)
        logits0 = logits if theta0 is None else phi.double() @ theta0[:features] + (
            theta0[features] if self.has_bias else 0)
        out[:, self.num_params:].copy_(logits0)
        self.pending.append(labels)

    def finish(self, block: torch.Tensor):
        """Residuals in place in the block's last C columns (in the rows' precision), for all its samples at once:
        softmax (cross-entropy) or the logits (squared loss), minus the one-hot labels. The classes decouple, so
        centring P acts on the C right-hand sides, whose residuals are already centred."""
        labels, self.pending = torch.cat(self.pending), []
        res = block[:, self.num_params:]
        if self.loss == "ce":
            softmax_(res)
        fisher = None
        if self.with_fisher:
            weights = fisher_weights(res, self.loss, res if self.loss == "ce" else None).to(block.dtype)
            fisher = (block[:, :self.num_params].square().T @ weights).double()
        res.scatter_add_(1, labels[:, None], torch.full((len(labels), 1), -1.0, dtype=res.dtype, device=res.device))
        return fisher


class JacobianRows(_Rows):
    """Rows d f_c(x_i) / d w_S (N*C, P) via torch.func, in the fixed `names` order; k = 1."""

    def __init__(self, model, names: list, init, num_classes: int, loss: str, chunk_size=None,
                 curvature: str = "uniform", precision: str = "float64"):
        super().__init__(model, num_classes, loss, curvature, precision)
        params = dict(model.named_parameters())
        self.names, self.chunk_size = list(names), chunk_size
        self.primals = {n: (params[n] if init is None else init[n]).detach() for n in self.names}
        self.num_params, self.num_rhs = sum(p.numel() for p in self.primals.values()), 1
        self.rows_per_sample, self.gram_scale = num_classes, 1.0

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
