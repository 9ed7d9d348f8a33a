"""The unlearning loop on accelerate: one optimizer, per-step deterministic batches and noise, checkpoints, resume.

The trainer owns devices, mixed precision, the optimizer, checkpointing and logging. A method sees a narrow step
context (`context.py`): it only computes losses and calls `update(loss, clip=..., mask=...)` for each optimizer step
it wants (see `methods/base.py`).

Under FSDP2 (see `distributed.py`) `trainer.params` are the sharded parameters, a saliency mask is sharded like them,
checkpoints are accelerate's sharded ones, and after `train` the network is a plain module with the full weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..data import StepSampler
from ..distributed import make_accelerator, parameter_free_copy, unshard_module
from ..errors import NonFiniteLossError
from .context import StepContext
from .latent_cache import cached_sets
from .step import check_process_split, make_optimizer, masked_step
from .streams import Stream

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"


class Trainer:
    """Runs `method` for `cfg.train.steps` steps on `model` with the forget set D_f and the remain set D_r.

    Args:
        cfg: the validated `RunConfig`.
        model: a `DiffusionModel` wrapper (its network is trained in place).
        method_cls: the registered `UnlearningMethod` class.
        forget_set, remain_set: data sets yielding dicts of tensors.
        work_dir: folder for checkpoints (`checkpoints/`) and the loss log (`losses.jsonl`).
    """

    def __init__(self, cfg, model, method_cls, forget_set, remain_set, work_dir, progress: bool = True):
        self.cfg, self.train_cfg, self.model = cfg, cfg.train, model
        self.work_dir = Path(work_dir)
        tracker = None if self.train_cfg.report_to == "none" else self.train_cfg.report_to  # explicit, as diffusers'
        self.accelerator = make_accelerator(mixed_precision=self.train_cfg.mixed_precision, log_with=tracker,
                                            project_dir=str(self.work_dir))
        set_seed(cfg.seed)
        acc = self.accelerator
        self.model.to(acc.device)
        if self.train_cfg.gradient_checkpointing:
            self.model.network.enable_gradient_checkpointing()
        # FSDP2 shards the network in place (class and parameters); this copy without weights is what it turns
        # back into after training, see `unshard_module`
        self._plain_network = parameter_free_copy(self.model.network) if acc.is_fsdp2 else None
        optimizer = make_optimizer([p for _, p in self.model.trainable_parameters()], self.train_cfg)
        # model and optimizer in one `prepare`: under FSDP2 accelerate moves the optimizer onto the sharded parameters
        self.model.forward_module, self.optimizer = acc.prepare(self.model.network, optimizer)
        if self.train_cfg.compile:  # here, not accelerate's dynamo_backend: its state keeps the first Accelerator's
            self.model.forward_module = torch.compile(self.model.forward_module)  # setting for the whole process
        self.params = self.model.trainable_parameters()  # after prepare: FSDP2 replaces them by sharded DTensors
        self.model.network.train()
        bs = self.train_cfg.batch_size
        check_process_split(acc.num_processes, bs, forget_set, remain_set)
        forget_set, remain_set = cached_sets(model, forget_set, remain_set, enabled=self.train_cfg.cache_latents)
        self.forget_sampler = StepSampler(forget_set, bs, cfg.seed + 1, acc.process_index, acc.num_processes)
        self.remain_sampler = StepSampler(remain_set, bs, cfg.seed + 2, acc.process_index, acc.num_processes)
        self.progress = progress and acc.is_main_process
        self.context = StepContext(self)  # what the method sees of the run
        self.method = method_cls(cfg.method, self.context)
        if tracker and acc.is_main_process:
            acc.init_trackers("diffunlearn")

    # --- services for methods -----------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.train_cfg.steps

    def generator(self, step: int, stream: int) -> torch.Generator:
        """A fresh generator for (step, stream), identical in a resumed run and on every process (draws are made
        for the global batch and sliced, see `shard`)."""
        seed = (self.cfg.seed * 1_000_003 + step * 101 + stream) * 65_537
        return torch.Generator(self.accelerator.device).manual_seed(seed % (2 ** 63))

    @property
    def shard(self) -> tuple:
        """(process index, number of processes): this process holds rows index::count of each global batch."""
        return self.accelerator.process_index, self.accelerator.num_processes

    def forget_batch(self, step: int) -> dict:
        return self.forget_sampler.batch(step, self.accelerator.device)

    def remain_batch(self, step: int) -> dict:
        return self.remain_sampler.batch(step, self.accelerator.device)

    def losses(self, batch: dict, step: int, stream: int, **kwargs) -> torch.Tensor:
        """Per-sample training losses (B,) with this run's condition dropout and timestep pairing."""
        return self.model.training_losses(batch, generator=self.generator(step, stream),
                                          cond_drop=self.train_cfg.cond_drop, antithetic=self.train_cfg.antithetic,
                                          shard=self.shard, **kwargs)

    def anchored_losses(self, batch: dict, step: int, stream: int, **kwargs) -> torch.Tensor:
        """Per-sample concept-mapping losses (B,) (forget condition onto its anchor, same x_t and t)."""
        return self.model.anchored_losses(batch, generator=self.generator(step, stream),
                                          antithetic=self.train_cfg.antithetic, shard=self.shard, **kwargs)

    def update(self, loss: torch.Tensor, clip=None, mask=None) -> None:
        """One optimizer step on `loss` (see `masked_step`: masked gradients, clipped, masked-out elements kept)."""
        self.accelerator.backward(loss)
        clip_fn = (lambda params: self.accelerator.clip_grad_norm_(params, clip)) if clip else None
        masked_step(self.params, self.optimizer, mask.tensors if mask is not None else None, clip_fn,
                    mask.partially_frozen if mask is not None else None)

    # --- checkpoints --------------------------------------------------------------------------------------------
    def latest_checkpoint(self):
        root = self.work_dir / CHECKPOINTS
        done = [d for d in root.glob("step_*") if (d / STATE_FILE).is_file()] if root.is_dir() else []
        return max(done, key=lambda d: int(d.name.split("_")[1]), default=None)

    def repair_step(self, step: int) -> dict:
        """A remain-only step (the plain diffusion loss on D_r), what the retained guard runs instead of the
        method's step while the target is gone but the retained estimate is not back (see `Monitor`)."""
        loss = self.losses(self.remain_batch(step), step, stream=Stream.REMAIN).mean()
        self.update(loss, clip=self.cfg.stop.repair_clip)
        return {"repair_loss": loss.detach()}

    def save_checkpoint(self, step: int, callback=None) -> None:
        acc = self.accelerator
        target = self.work_dir / CHECKPOINTS / f"step_{step}"
        acc.save_state(str(target), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"step": step}
            if hasattr(callback, "state_dict"):  # e.g. a Monitor's checks so far and its best state
                state["callback"] = callback.state_dict()
                callback.save(target)
            (target / STATE_FILE).write_text(json.dumps(state))  # written last: marks it complete
            for old in (self.work_dir / CHECKPOINTS).glob("step_*"):
                if old != target:
                    shutil.rmtree(old, ignore_errors=True)

    def resume(self, callback=None) -> int:
        """Load the latest complete checkpoint (and the callback's state saved with it); return the first step
        still to run."""
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            return 0
        self.accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / STATE_FILE).read_text())
        if "callback" in state and hasattr(callback, "load_state_dict"):
            callback.load_state_dict(state["callback"])
            callback.load(ckpt)
        return state["step"] + 1

    # --- the loop -----------------------------------------------------------------------------------------------
    def _flush_logs(self, pending: list, log_file) -> None:
        if not pending:
            return
        flat = torch.stack([v.float() for _, logs in pending for v in logs.values()]).detach()
        flat = self.accelerator.reduce(flat, "mean").cpu().tolist()  # the same verdict on every process
        values = iter(flat)
        for step, logs in pending:
            row = [next(values) for _ in logs]
            record = {"step": step, **dict(zip(logs, row))}
            if not all(math.isfinite(v) for v in row):
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} ({record}); the run stopped, its last good checkpoint is "
                    f"{self.latest_checkpoint()}; lower train.lr or the method's scales and rerun with --overwrite")
            if log_file is not None:
                log_file.write(json.dumps(record) + "\n")
                self.accelerator.log(dict(zip(logs, row)), step=step)
        if log_file is not None:
            log_file.flush()
        pending.clear()

    def train(self, callback=None, finish: bool = True) -> dict:
        """Run setup (e.g. the saliency mask) and the unlearning steps; returns timings in seconds.

        Args:
            callback: optional `callback(step) -> bool` called after each step (e.g. a `Monitor`'s in-loop checks,
                with the network in train mode); its time is excluded from "unlearning" and reported as "checks",
                and returning True stops the run early. If it has `repairing` True, the next step is a
                `repair_step` instead of the method's; its `state_dict` (and what its `save` writes) is saved
                with checkpoints and restored on resume; its `finish` runs after the last step.
            finish: call `finish()` at the end; False keeps the process group for work that follows on every
                process (evaluation), and the caller calls `finish()` after it.
        """
        start = time.perf_counter()
        setup_info = self.method.setup() or {}
        setup_seconds = time.perf_counter() - start
        first = self.resume(callback)
        self._clock_start, self._clock_excluded = time.perf_counter(), 0.0
        pending = []
        main = self.accelerator.is_main_process
        log = open(self.work_dir / "losses.jsonl", "a") if main else contextlib.nullcontext()
        with log as log_file, tqdm(initial=first, total=self.total_steps, disable=not self.progress,
                                   desc=f"unlearn ({self.cfg.method.name})") as bar:  # by hand: ends where the run ends
            for step in range(first, self.total_steps):
                repair = getattr(callback, "repairing", False)
                pending.append((step, self.repair_step(step) if repair else self.method.training_step(step)))
                if callback is not None:
                    tick = time.perf_counter()
                    stop = callback(step)
                    self._clock_excluded += time.perf_counter() - tick
                    if stop:
                        self._flush_logs(pending, log_file)
                        bar.total = step + 1  # "stopped at 50: forgotten", 50/50
                        bar.set_description_str(f"unlearn ({self.cfg.method.name}) stopped at {step + 1}: "
                                                f"{getattr(callback, 'stop_reason', 'stopped')}", refresh=False)
                        bar.update(1)
                        break
                bar.update(1)
                last = step == self.total_steps - 1
                checkpoint = (step + 1) % self.train_cfg.checkpoint_every == 0 and not last
                if checkpoint or last or (step + 1) % self.train_cfg.log_every == 0:
                    self._flush_logs(pending, log_file)  # raises on a non-finite loss before any checkpoint
                if checkpoint:
                    self.save_checkpoint(step, callback)
        if hasattr(callback, "finish"):  # e.g. a Monitor falls back on its best state
            callback.finish()
        self.accelerator.wait_for_everyone()
        if self._plain_network is not None:  # collective: before the process group goes
            unshard_module(self.model.network, self._plain_network)
            self._plain_network, self.params = None, self.model.trainable_parameters()
        if finish:
            self.finish()
        self.model.forward_module = None
        self.model.network.eval()
        return {"setup": setup_seconds, "unlearning": self.unlearning_seconds(), "checks": self._clock_excluded,
                "first_step": first, **setup_info}

    def finish(self) -> None:
        """Close the trackers and destroy the process group (`Accelerator.end_training`)."""
        self.accelerator.end_training()

    def unlearning_seconds(self) -> float:
        """Wall seconds of unlearning steps so far in the current `train` call: setup and callback time excluded
        (a callback may read it to place its measurement on the unlearning clock)."""
        return time.perf_counter() - self._clock_start - self._clock_excluded
