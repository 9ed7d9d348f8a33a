"""Forgetting that lasts: simulated attackers inside the unlearning loop (`method.relearn_steps`,
`method.condition_attack_steps`), for any method whose forget step is "minimise a forget loss".

Two inner attackers, each with its own switch (0 steps: off), both adding to the gradient of a forget step before
its mask, clip and optimizer step (so the saliency mask and clip of the method keep their meaning):

- *Simulated relearning* (first-order Meta-Unlearning, arXiv 2410.12777, `src/meta.py`): from the current weights
  theta, a fresh Adam takes `relearn_steps` steps of the plain diffusion loss on `relearn_batch` images of D_f (what
  the `relearning` attack does, lr `relearn_lr`), giving theta'; the forget loss is evaluated at theta' and its
  gradient, times `relearn_weight`, is added at theta (first-order: the Jacobian of theta' in theta is taken as the
  identity), then theta is restored. The update thus pushes the target down where a short fine-tune would take the
  model, not only where it is.
- *Condition attack* (AdvUnlearn-style, OPTML-Group/AdvUnlearn): an inner attack finds the condition that brings the
  target back with the network frozen, and the forget loss under that condition joins the forget step (times
  `condition_attack_weight`). Class families: the forgotten classes' rows of every class-embedding table become free
  vectors (the `inversion` attack's variable), `condition_attack_steps` Adam steps (lr `condition_attack_lr`) on the
  denoising loss of D_f images, started from the rows themselves. Text families: an additive perturbation of the
  forget prompts' condition tensor, the same Adam steps, projected onto an L2 ball of `condition_attack_radius` x the
  condition's norm per sample (a continuous stand-in for UnlearnDiffAtk's prefix tokens).

A third term, for the attack that uses no condition at all (completion under the null condition): *prior mapping*
(`method.prior_weight`, `prior_guidance`, `prior_batch`). With no condition dropout the unconditional branch is never
trained during unlearning, so the model's prior still completes a lightly noised target as the base does; a model
retrained without the target has a prior that never saw it and takes such an image to a nearby retained one. The
term trains the null condition's prediction on noised D_f images toward the frozen base's prediction guided to an
anchor: eps_0(x_t, null) + s (eps_0(x_t, a) - eps_0(x_t, null)), s = `prior_guidance`, a = the anchor prompt
(concepts) or, per image, the retained class under which the base denoises it best (the diffusion classifier's top
retained class at the drawn t and noise). A regression added to the remain step (unmasked, under the remain clip).
ESD's negative guidance away from the target (tried first) leaves such a target nearly unchanged where the
image is clearly the target: there eps_0(x_t, c_f) = eps_0(x_t, null), so it cannot move a light completion.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..config import MethodConfig
from ..data.sets import remain_classes
from ..distributed import fsdp_requested
from ..errors import UserError
from ..models.base import cfg_combine, squared_error
from ..models.conditions import free_class_embedding
from ..training.fine_tune import values_restored
from ..training.streams import Stream
from .esd import BaseWeights

_INNER = 1000  # inner steps per outer step in the generators' step index (relearn and attack steps stay below it)
_ATTACK_ROWS = 16  # D_f rows the class-row attack fits to (the inversion attack's batch)


@dataclass
class LastingConfig(MethodConfig):
    """The inner attackers' settings; every default is off (0 steps)."""

    relearn_steps: int = 0  # simulated fine-tune steps on D_f before the meta forget loss; 0: off
    relearn_lr: float = 1e-4  # the `relearning` attack's Adam lr
    relearn_batch: int = 8  # D_f images the simulated attacker fine-tunes on (rows of the step's forget batch)
    relearn_weight: float = 1.0  # weight of the forget loss after the simulated fine-tune
    condition_attack_steps: int = 0  # inner attack on the condition (class rows / prompt condition); 0: off
    condition_attack_lr: float = 0.01  # the `inversion` attack's Adam lr
    condition_attack_radius: float = 0.25  # text families: L2 ball radius, as a share of the condition's norm
    condition_attack_weight: float = 1.0  # weight of the forget loss under the attacked condition
    prior_weight: float = 0.0  # prior mapping: weight of the null-branch term in the remain step; 0: off
    prior_guidance: float = 2.0  # s: the target is the base guided with scale s to the anchor
    prior_batch: int = 16  # D_f images (rows of the step's forget batch) it is computed on

    def __post_init__(self):
        for key in ("relearn_steps", "condition_attack_steps"):
            value = getattr(self, key)
            if not isinstance(value, int) or not 0 <= value < _INNER:
                raise UserError(f"method.{key} must be an integer in 0..{_INNER - 1}, got {value!r}")
        for key in ("relearn_lr", "relearn_batch", "condition_attack_lr", "condition_attack_radius", "prior_batch"):
            if getattr(self, key) <= 0:
                raise UserError(f"method.{key} must be > 0, got {getattr(self, key)!r}")
        for key in ("relearn_weight", "condition_attack_weight", "prior_weight", "prior_guidance"):
            if getattr(self, key) < 0:
                raise UserError(f"method.{key} must be >= 0, got {getattr(self, key)!r}")

    @property
    def lasting(self) -> bool:
        return self.relearn_steps > 0 or self.condition_attack_steps > 0 or self.prior_weight > 0


def _rows(batch: dict, n: int) -> dict:
    return {key: value[:n] for key, value in batch.items()}


class InnerAttackers:
    """Accumulates the lasting terms' gradients into the trainable parameters' `.grad` for one forget step.

    `forget_loss(stream, cond)` is the method's forget loss on the step's forget batch (a scalar to minimise) with
    its random draws from `stream` and, where `cond` is given, that condition instead of the batch's; the trainer's
    next `update` adds the method's own forget gradient, masks, clips and steps.
    """

    def __init__(self, cfg: LastingConfig, context):
        self.cfg, self.context, self.model = cfg, context, context.model
        if cfg.condition_attack_steps and not context.cfg.forget.is_concept and not self.model.class_embeddings():
            raise UserError(f"method.condition_attack_steps: the {self.model.family} family has no class-embedding "
                            "table to attack; valid: 0")
        if cfg.prior_weight and fsdp_requested():
            raise UserError(f"method.prior_weight {cfg.prior_weight!r} is not supported under FSDP (its frozen-base "
                            "targets swap weights in place, as ESD's); valid under FSDP: 0")
        self.base = BaseWeights(self.model, context.params) if cfg.prior_weight else None

    def accumulate(self, step: int, forget_loss, scale: float) -> dict:
        """Add scale x the lasting terms' gradients at this step; returns their forget losses (detached; for classes
        the weighted loss that the ascent raises, as SFR-on's `forget_loss` log) for the log."""
        logs, sign = {}, 1.0 if self.context.cfg.forget.is_concept else -1.0
        if self.cfg.relearn_steps:
            logs["relearned_forget_loss"] = sign * self._relearned(step, forget_loss, scale)
        if self.cfg.condition_attack_steps:
            logs["attacked_forget_loss"] = sign * self._attacked(step, forget_loss, scale)
        return logs

    def prior_loss(self, step: int) -> torch.Tensor:
        """The prior-mapping loss of this step (to minimise): mean over `prior_batch` D_f rows of
        ||eps(x_t, null) - stopgrad[eps_0(x_t, null) + s (eps_0(x_t, a) - eps_0(x_t, null))]||^2 (summed over the
        prediction's elements, as the training loss), eps_0 the frozen base model, a the row's anchor."""
        model, context = self.model, self.context
        batch = _rows(context.forget_batch(step), self.cfg.prior_batch)
        x0, noise, t, x_t = model.noised(batch, context.generator(step, Stream.LASTING_PRIOR),
                                         context.train_cfg.antithetic, context.shard)
        null = model.null_condition(model.condition(batch))
        with torch.no_grad(), self.base.active():
            anchor = self._anchor(batch, x_t, t, model.training_target(x0, noise, t))
            target = cfg_combine(model.predict(x_t, t, anchor), model.predict(x_t, t, null), self.cfg.prior_guidance)
        return squared_error(model.predict(x_t, t, null), target).mean()

    def _anchor(self, batch: dict, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor):
        """Each row's anchor condition: the anchor prompt (concepts), else the retained class with the lowest
        denoising error of the current network (the base, inside `prior_loss`) on (x_t, t, target). Classes cost one
        forward pass of the rows per retained class: 9 on the digits models, 999 on an ImageNet-1k DiT (measured
        only on the digits)."""
        model = self.model
        if self.context.cfg.forget.is_concept:
            return model.anchor_condition(batch)
        labels = batch["labels"]
        classes = torch.as_tensor(remain_classes(self.context.cfg, model), device=labels.device)
        errors = torch.stack([
            squared_error(model.predict(x_t, t, model.condition({**batch, "labels": torch.full_like(labels, int(c))})),
                          target) for c in classes], 1)
        return model.condition({**batch, "labels": classes[errors.argmin(1).to(labels.device)]})

    # --- simulated relearning ---------------------------------------------------------------------------------------
    def _relearned(self, step: int, forget_loss, scale: float) -> torch.Tensor:
        cfg, context = self.cfg, self.context
        params = [p for _, p in context.params]
        batch = _rows(context.forget_batch(step), cfg.relearn_batch)
        attacker = torch.optim.Adam(params, lr=cfg.relearn_lr)
        context.zero_grad()
        with values_restored(params):  # theta back afterwards; the gradient at theta' stays in .grad
            for i in range(cfg.relearn_steps):
                loss = context.losses(batch, step * _INNER + i, stream=Stream.LASTING_RELEARN).mean()
                context.backward(loss)
                attacker.step()
                attacker.zero_grad(set_to_none=True)
            after = forget_loss(Stream.LASTING_META)
            context.backward(cfg.relearn_weight * scale * after)
        return after.detach()

    # --- condition attack -------------------------------------------------------------------------------------------
    def _attacked(self, step: int, forget_loss, scale: float) -> torch.Tensor:
        context = self.context
        batch = context.forget_batch(step)
        if context.cfg.forget.is_concept:
            cond = self._attacked_condition(step, batch)
            loss = forget_loss(Stream.LASTING_ATTACKED, cond)
        else:
            with contextlib.ExitStack() as stack:
                self._attacked_rows(step, batch, stack)
                loss = forget_loss(Stream.LASTING_ATTACKED)
        context.backward(self.cfg.condition_attack_weight * scale * loss)
        return loss.detach()

    def _fit(self, step: int, batch: dict, free: list, cond=None) -> None:
        """Adam on the free tensors `free` to minimise the denoising loss of D_f images (network gradients unused)."""
        optimizer = torch.optim.Adam(free, lr=self.cfg.condition_attack_lr)
        for i in range(self.cfg.condition_attack_steps):
            current = None if cond is None else cond + free[0]
            loss = self.context.losses(batch, step * _INNER + i, stream=Stream.LASTING_ATTACK, cond=current).mean()
            grads = torch.autograd.grad(loss, free)
            for vector, grad in zip(free, grads):
                vector.grad = grad
            optimizer.step()
            if cond is not None:
                self._project(free[0], cond)

    def _attacked_rows(self, step: int, batch: dict, stack) -> None:
        """Inside `stack`, each forgotten class's rows are the fitted free vectors (the `inversion` attack's)."""
        fit_batch = _rows(batch, _ATTACK_ROWS)
        for label in self.context.cfg.forget.classes:
            free = stack.enter_context(free_class_embedding(self.model, label, label))
            self._fit(step, fit_batch, free)
            for vector in free:
                vector.requires_grad_(False)

    def _attacked_condition(self, step: int, batch: dict) -> torch.Tensor:
        """The forget batch's condition plus a perturbation fitted inside the L2 ball (detached)."""
        with torch.no_grad():
            cond = self.model.condition(batch).detach()
        delta = torch.zeros_like(cond, requires_grad=True)
        self._fit(step, batch, [delta], cond=cond)
        return (cond + delta).detach()

    def _project(self, delta: torch.Tensor, cond: torch.Tensor) -> None:
        with torch.no_grad():
            dims = tuple(range(1, cond.dim()))
            radius = self.cfg.condition_attack_radius * cond.float().pow(2).sum(dims, keepdim=True).sqrt()
            norm = delta.float().pow(2).sum(dims, keepdim=True).sqrt().clamp_min(1e-12)
            delta.mul_((radius / norm).clamp(max=1.0).to(delta.dtype))
