"""What an unlearning method sees of the run: a narrow step context, not the whole Trainer.

As open-unlearning's methods see a batch and a loss hook, a method here sees the run config and the model, D_f / D_r
batches for a step, the family's per-sample losses, the one update rule (`update`, which is `training/step.py:
masked_step`), the named random streams (`generator(step, Stream.X)`), and the process layout and gradient
primitives a saliency mask needs. The optimizer, the accelerator, checkpoints and logging stay with the Trainer.
"""

from __future__ import annotations

import torch


class StepContext:
    """A method's view of its `Trainer` (`trainer.context`)."""

    def __init__(self, trainer):
        self._trainer = trainer
        self.cfg, self.train_cfg, self.model = trainer.cfg, trainer.train_cfg, trainer.model

    # --- the run ---------------------------------------------------------------------------------------------------
    @property
    def params(self) -> list:
        """[(name, parameter)] of the trainable subset (sharded under FSDP2)."""
        return self._trainer.params

    @property
    def total_steps(self) -> int:
        return self._trainer.total_steps

    @property
    def shard(self) -> tuple:
        """(process index, process count): this process's share of a batch's per-sample draws."""
        return self._trainer.shard

    def generator(self, step: int, stream: int) -> torch.Generator:
        """The seeded generator of `stream` at `step` (every draw of a step comes from one of these)."""
        return self._trainer.generator(step, stream)

    # --- batches, losses, the update ---------------------------------------------------------------------------------
    def forget_batch(self, step: int) -> dict:
        return self._trainer.forget_batch(step)

    def remain_batch(self, step: int) -> dict:
        return self._trainer.remain_batch(step)

    def losses(self, batch: dict, step: int, stream: int, **kwargs) -> torch.Tensor:
        """Per-sample training losses of the family: (B,)."""
        return self._trainer.losses(batch, step, stream, **kwargs)

    def anchored_losses(self, batch: dict, step: int, stream: int, **kwargs) -> torch.Tensor:
        """Per-sample concept-mapping losses (forget prompt onto its anchor): (B,)."""
        return self._trainer.anchored_losses(batch, step, stream, **kwargs)

    def update(self, loss: torch.Tensor, clip=None, mask=None) -> None:
        """One optimizer step on `loss` (gradient clipped to `clip`, only the elements of `mask` move)."""
        self._trainer.update(loss, clip=clip, mask=mask)

    # --- processes and gradients (saliency masks, SA's Fisher) -------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._trainer.accelerator.device

    @property
    def process_index(self) -> int:
        return self._trainer.accelerator.process_index

    @property
    def num_processes(self) -> int:
        return self._trainer.accelerator.num_processes

    @property
    def is_main_process(self) -> bool:
        return self._trainer.accelerator.is_main_process

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._trainer.accelerator.gather(tensor)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of `loss` (mixed precision and processes handled) without an update."""
        self._trainer.accelerator.backward(loss)

    def clip_grad_norm_(self, parameters, max_norm: float):
        return self._trainer.accelerator.clip_grad_norm_(parameters, max_norm)

    def zero_grad(self) -> None:
        self._trainer.optimizer.zero_grad(set_to_none=True)
