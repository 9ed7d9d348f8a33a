"""The `stop` section of a run config (stop when forgotten: in-loop checks, the retained guard, the confirmation and
the relearning probe); part of `config.RunConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .config_checks import check_positive, check_seed
from .errors import UserError


@dataclass
class StopConfig:
    """Stop when forgotten: every `check_every` steps a cheap in-loop check samples `forget_samples` images of the
    forget targets (and `retained_samples_per_class` of each retained one) with `num_inference_steps` steps from
    fixed seeds (`seed`, not the final evaluation's), judges them and estimates FID_retained against the base
    model under the same cheap protocol. The run stops at the first check that ends `patience` consecutive checks
    with forget accuracy <= `forget_accuracy_max` while the retained FID estimate is <= `fid_ratio_max` x the
    base's. Retained guard: when the target is gone but the retained estimate is over that bound, the following
    steps are repair steps (the plain diffusion loss on D_r, clipped to `repair_clip`) until a check passes;
    forgetting resumes if the forget estimate rises again. After `max_repair_checks` repair checks in a row, or at
    `train.steps`, the run ends on its best checked state: the lowest retained estimate among checks whose forget
    estimate passed.
    """

    check_every: int = 0  # 0: no checks, run all train.steps
    forget_accuracy_max: float = 0.02
    patience: int = 2
    min_steps: int = 0  # no stop before this step
    forget_samples: int = 64  # per forget target
    retained_samples_per_class: int = 32  # per retained target (>= 2: FID needs a covariance)
    num_inference_steps: int = 10
    seed: int = 777_000  # sampling seeds of the checks (image j of target k: seed + 100000 * k + j)
    fid_ratio_max: Optional[float] = 0.95  # retained guard; null: stop on the forget estimate alone
    repair_clip: Optional[float] = 1.0
    max_repair_checks: int = 5  # then stop and keep the best checked state (lowest retained estimate, forgotten)
    # before a stop as forgotten: the final evaluation's forget samples (its sampler, steps, guidance and sample
    # count, seeds of their own) must pass too, and the distance signal must agree with the judge against the base's
    # final evaluation; else the run goes on. false: no confirmation
    confirm: bool = True
    confirm_seed: int = 888_000
    # lasting: before a stop as forgotten (and before its confirmation), a short fine-tune on relearn_probe_k images of
    # D_f (Adam, lr relearn_probe_lr, batch 8: the relearning attack in miniature) must leave the forget estimate at
    # most relearn_probe_max; else the run goes on (evaluation/relearn_probe.py). 0 steps: no probe
    relearn_probe_steps: int = 0
    relearn_probe_k: int = 8
    relearn_probe_lr: float = 1e-4
    relearn_probe_max: float = 0.25
    relearn_probe_seed: int = 999_000
    # after a probe that failed, the checks within relearn_probe_gap steps of it count as failed without a probe (fewer
    # probes; the run's trajectory is unchanged, since a probe puts every weight back); 0: every stop is probed
    relearn_probe_gap: int = 0

    def __post_init__(self):
        if self.check_every < 0 or self.min_steps < 0:
            raise UserError(f"stop.check_every and stop.min_steps must be >= 0, got {self.check_every}, "
                            f"{self.min_steps}")
        check_seed("stop", seed=self.seed, confirm_seed=self.confirm_seed, relearn_probe_seed=self.relearn_probe_seed)
        check_positive("stop", relearn_probe_k=self.relearn_probe_k, relearn_probe_lr=self.relearn_probe_lr)
        if not isinstance(self.relearn_probe_steps, int) or self.relearn_probe_steps < 0:
            raise UserError(f"stop.relearn_probe_steps must be an integer >= 0 (0: no probe), got "
                            f"{self.relearn_probe_steps!r}")
        if not isinstance(self.relearn_probe_gap, int) or self.relearn_probe_gap < 0:
            raise UserError(f"stop.relearn_probe_gap must be an integer >= 0 (steps; 0: probe every stop), got "
                            f"{self.relearn_probe_gap!r}")
        if not 0.0 <= self.relearn_probe_max < 1.0:
            raise UserError(f"stop.relearn_probe_max must be in [0, 1), got {self.relearn_probe_max!r}")
        check_positive("stop", patience=self.patience, forget_samples=self.forget_samples,
                       num_inference_steps=self.num_inference_steps, max_repair_checks=self.max_repair_checks)
        if not 0.0 <= self.forget_accuracy_max < 1.0:
            raise UserError(f"stop.forget_accuracy_max must be in [0, 1), got {self.forget_accuracy_max!r}")
        if self.fid_ratio_max is not None and self.fid_ratio_max <= 0:
            raise UserError(f"stop.fid_ratio_max must be > 0 or null, got {self.fid_ratio_max!r}")
        if self.retained_samples_per_class < 2:
            raise UserError(f"stop.retained_samples_per_class={self.retained_samples_per_class} cannot estimate the "
                            "retained FID; valid: >= 2 (FID needs a covariance)")

    @property
    def enabled(self) -> bool:
        return self.check_every > 0
