"""A cheap relearning probe for the stop rule (`stop.relearn_probe_steps`): does the target come back after a short
fine-tune? A run that would stop as forgotten goes on while it does.

The probe is the `relearning` attack in miniature on the live model: from the current weights, a fresh Adam takes
`relearn_probe_steps` steps (lr `relearn_probe_lr`, batches of 8) of the plain diffusion loss on a fixed seeded draw
of `relearn_probe_k` images of D_f; the forget estimate is then taken under the checks' protocol (`part="forget"`),
and the weights are put back exactly as they were. It passes when that estimate is <= `relearn_probe_max`.
`relearn_probe_gap` (steps) spaces the probes out: the monitor does not probe again within that many steps of a
probe that failed (`Monitor.check_probe`).
"""

from __future__ import annotations

from ..training.fine_tune import FineTune, seeded_rows, values_restored


class RelearnProbe:
    """Callable on the model being unlearned: {"forget_accuracy", "steps", "k", "lr", "passed"} after the probe's
    fine-tune (the weights restored afterwards)."""

    def __init__(self, evaluator, forget_set, steps: int, k: int, lr: float, fa_max: float, seed: int,
                 batch_size: int = 8, gap: int = 0):
        self.evaluator, self.steps, self.k, self.lr, self.fa_max = evaluator, steps, k, lr, fa_max
        self.seed, self.batch_size, self.gap = seed, batch_size, gap
        self.images = seeded_rows(forget_set, k, seed)

    def __call__(self, model) -> dict:
        training = model.network.training
        try:
            with values_restored([p for _, p in model.trainable_parameters()], grads=True):
                FineTune(model, self.images, self.lr, self.batch_size, self.seed, self.seed * 7919).advance(self.steps)
                metrics = self.evaluator(model, part="forget")[0]
        finally:
            model.network.train(training)
        fa = metrics["forget_accuracy"]
        return {"forget_accuracy": fa, "passed": fa <= self.fa_max, **self.settings()}

    def settings(self) -> dict:
        """What the report records of the probe (its protocol is the checks')."""
        return {"steps": self.steps, "k": self.k, "lr": self.lr, "batch_size": self.batch_size,
                "forget_accuracy_max": self.fa_max, "seed": self.seed, "gap": self.gap}
