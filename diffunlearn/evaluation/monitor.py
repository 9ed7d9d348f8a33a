"""In-loop checks of an unlearning run: a cheap estimate of forget accuracy and of the retained FID, and what the
run does next (go on, repair the retained targets, or stop), and the best forgotten state to fall back on.

One mechanism for two users: `diffunlearn unlearn` stops when forgotten (the `stop` config section), and the
generation benchmark finds each method's steps-to-criterion with the same checks (it does not stop SFR-on's row).
A check samples from fixed seeds with few sampling steps and scores against the base model measured under the
same cheap protocol, so estimates are comparable from check to check and with the base.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import torch
from safetensors.torch import load_file, save_file

from .report import forgetting_signals

CONTINUE, REPAIR, STOP, SETTLE = "continue", "repair", "stop", "stop at best"
BEST_FILE = "monitor_best.safetensors"


@dataclass
class StopRule:
    """When a run has forgotten.

    Attributes:
        forget_accuracy_max: a check's forget estimate passes at or below this.
        patience: the run stops at the check that ends this many consecutive passing forget estimates ...
        fid_ratio_max: ... and whose retained FID estimate is at most this x the base's (None: not required).
        min_steps: no stop before this many steps.
        stop: False to record checks without ever stopping (a benchmark's full-length row).
        repair: False to never ask for repair steps (a benchmark compares methods as they are).
        max_repair_checks: after this many consecutive checks asking for repair, the run stops and falls back on
            its best state (see `Monitor`).
    """

    forget_accuracy_max: float = 0.05
    patience: int = 1
    fid_ratio_max: Optional[float] = None
    min_steps: int = 0
    stop: bool = True
    repair: bool = True
    max_repair_checks: int = 5

    def forget_passes(self, forget_accuracy: float) -> bool:
        return forget_accuracy <= self.forget_accuracy_max

    def retained_passes(self, fid_ratio: float) -> bool:
        return self.fid_ratio_max is None or fid_ratio <= self.fid_ratio_max


def cheap_eval_config(cfg, forget_samples: int, retained_samples_per_class: int, num_inference_steps: int,
                      seed: Optional[int] = None):
    """A copy of the run config whose `eval` section is the cheap protocol of in-loop checks."""
    cheap = dataclasses.replace(cfg, eval=dataclasses.replace(
        cfg.eval, forget_samples=forget_samples, retained_samples_per_class=retained_samples_per_class,
        num_inference_steps=num_inference_steps, seed=cfg.eval.seed if seed is None else seed))
    return cheap


class Monitor:
    """Checks a model during training and decides what the run does next; a `Trainer.train` callback.

    It also keeps the best state: the trainable weights at the check with the lowest retained estimate among those
    whose forget estimate passed. A run that ends without a clean stop (out of steps, or `max_repair_checks`
    repair checks in a row: repair does not always bring a noisy, drifting retained estimate back) ends on that
    state (`finish`).

    Args:
        model: the model being trained (its network is put in eval mode for a check and back in train mode).
        evaluator: an `Evaluator` of the cheap protocol (see `cheap_eval_config`).
        base_metrics: that evaluator's metrics of the base model.
        rule: the `StopRule`.
        every: check every this many steps; also at the steps in `also` and at the last step `total_steps`.
        clock: returns the unlearning seconds so far (recorded with each check).
        progress: called with one line per check (None: silent).
        confirmation: (evaluator, base metrics): the final evaluation's protocol on seeds of its own, and the base
            model's metrics under the final evaluation: a check that would stop the run as forgotten stops it only
            when the forget samples of this evaluator pass too and their distance signal agrees with the judge
            (`report.forgetting_signals`); otherwise the run goes on. It samples the forget targets only. None: no
            confirmation.
        retained_when_forgotten: sample the retained targets of a check only when its forget estimate passes (the
            rule reads the retained estimate only then: the same decisions, fewer samples); a check whose forget
            estimate fails records no retained estimate. False: every check estimates both (a benchmark's curves).
        base_reused: {"checks": bool, "confirmation": bool}: whether the base's metrics came from the cache.
        base_evaluation: (metrics, gallery images, reused) of the base under the final evaluation, which the
            confirmation compared with; the run's evaluation uses it instead of evaluating the base again.
        probe: a `RelearnProbe`: a stop as forgotten, and a state kept as the fallback, also need the target to stay
            forgotten through a short fine-tune (tested before the confirmation, which costs more); otherwise the run
            goes on and the state is no fallback (a run that never passes ends on its last state). None: no probe.
    """

    def __init__(self, model, evaluator, base_metrics: dict, rule: StopRule, every: int, total_steps: int,
                 also=(), clock: Optional[Callable[[], float]] = None, progress: Optional[Callable] = None,
                 confirmation: Optional[tuple] = None, retained_when_forgotten: bool = False,
                 base_reused: Optional[dict] = None, base_evaluation: Optional[tuple] = None, probe=None):
        self.model, self.evaluator, self.rule, self.confirmation = model, evaluator, rule, confirmation
        self.probe = probe
        self.retained_when_forgotten = retained_when_forgotten
        self.base = {"forget_accuracy": base_metrics["forget_accuracy"], "fid_retained": base_metrics["fid_retained"]}
        self.every, self.total_steps, self.also = every, total_steps, set(also)
        self.clock, self.progress = clock, progress
        self.history: List[dict] = []
        self.action = CONTINUE
        self.best, self.restored_step = None, None
        self.base_reused, self.base_evaluation = base_reused or {}, base_evaluation

    @property
    def best_step(self) -> Optional[int]:
        """Step of the best check so far (each `best` check improves on the ones before), None if none."""
        return max((h["step"] for h in self.history if h["best"]), default=None)

    @property
    def repairing(self) -> bool:
        """True while the retained guard asks for repair steps instead of the method's steps."""
        return self.action == REPAIR

    @property
    def stopped_at(self) -> Optional[int]:
        """The step count after which the run stopped, None if it ran all its steps."""
        last = self.history[-1] if self.history else None
        return last["step"] if last and last["action"] in (STOP, SETTLE) and last["step"] < self.total_steps else None

    @property
    def stop_reason(self) -> str:
        """Why the run stops, for the progress bar."""
        return "forgotten" if self.action == STOP else "kept its best forgotten state after repair checks"

    def due(self, step: int) -> bool:
        done = step + 1
        return done % self.every == 0 or done in self.also or done == self.total_steps

    def __call__(self, step: int) -> bool:
        """After step `step` (0-based): check if due; returns True when the run should stop."""
        if not self.due(step):
            return False
        seconds = self.clock() if self.clock else None
        network = self.model.network
        network.eval()
        if self.retained_when_forgotten:
            metrics = self.evaluator(self.model, part="forget")[0]
            if self.rule.forget_passes(metrics["forget_accuracy"]):
                metrics.update(self.evaluator(self.model, part="retained")[0])
        else:
            metrics = self.evaluator(self.model)[0]
        entry = self.record(step + 1, metrics, seconds)
        if self.probe is not None and (self.action == STOP or entry["best"]):  # the cheaper test first; a state
            self.check_probe(entry)  # that relearns is no stop and no fallback either
        if self.action == STOP and self.confirmation is not None:
            self.confirm(entry)
        network.train()
        if entry["best"] and self.rule.stop:  # only a run that can stop falls back on it (`finish`)
            self.best = {name: p.detach().to("cpu", copy=True) for name, p in self.model.trainable_parameters()}
        return self.action in (STOP, SETTLE)

    def record(self, done: int, metrics: dict, seconds: Optional[float] = None) -> dict:
        """Add the check after `done` steps with `metrics` to the history and set the next action."""
        rule, fa, fid = self.rule, metrics["forget_accuracy"], metrics.get("fid_retained")
        ratio = None if fid is None else fid / max(self.base["fid_retained"], 1e-12)
        forget_ok = rule.forget_passes(fa)
        if ratio is None and forget_ok:
            raise ValueError("a check whose forget estimate passes needs the retained estimate")
        retained_ok = ratio is None or rule.retained_passes(ratio)  # None: not read (the forget estimate failed)
        last = self.history[-1] if self.history else {"forget_streak": 0, "repair_streak": 0}
        streak = last["forget_streak"] + 1 if forget_ok else 0
        repairs = last["repair_streak"] + 1 if forget_ok and not retained_ok and rule.repair else 0
        if rule.stop and streak >= rule.patience and retained_ok and done >= rule.min_steps:
            self.action = STOP
        elif repairs:
            self.action = SETTLE if rule.stop and repairs > rule.max_repair_checks else REPAIR
        else:
            self.action = CONTINUE
        best_ratio = min((h["fid_ratio"] for h in self.history if h["best"]), default=float("inf"))
        best = forget_ok and ratio < best_ratio
        entry = {"step": done, "seconds": seconds, "forget_accuracy": fa, "fid_retained": fid,
                 "fid_ratio": ratio, "forget_confidence": metrics.get("forget_confidence"),
                 "forget_streak": streak, "repair_streak": repairs, "best": best, "action": self.action}
        self.history.append(entry)
        if self.progress:
            retained = "not sampled (forget estimate fails)" if fid is None else f"{fid:.3f} ({ratio:.2f} x base)"
            self.progress(f"step {done}: forget estimate {fa:.3f}, retained FID estimate {retained} -> {self.action}")
        return entry

    def confirm(self, entry: dict) -> None:
        """Confirm the stop `entry` asks for under the confirmation protocol; if it does not hold, the run goes on
        (the entry records the confirmation and its action becomes continue)."""
        evaluator, base = self.confirmation
        metrics = evaluator(self.model, part="forget")[0]
        signals = forgetting_signals(base, metrics)
        held = self.rule.forget_passes(metrics["forget_accuracy"]) and signals["agree"] is not False
        entry["confirmation"] = {"forget_accuracy": metrics["forget_accuracy"],
                                 "forget_accuracy_ci95": metrics["forget_accuracy_ci95"],
                                 "distance": signals["distance"], "agree": signals["agree"], "held": held}
        if not held:
            self.action = entry["action"] = CONTINUE
            entry["best"] = False  # not a forgotten state to fall back on
        if self.progress:
            self.progress(f"  confirmation ({evaluator.protocol['sampler']}, {evaluator.protocol['num_inference_steps']}"
                          f" steps): forget {metrics['forget_accuracy']:.3f}, distance {signals['distance']} -> "
                          + ("stop" if held else "not forgotten under the evaluation's sampler: continue"))

    def check_probe(self, entry: dict) -> None:
        """Relearning probe of the stop (or fallback state) `entry` asks for: while the target comes back after it,
        the run goes on and the state is not a fallback. Within `probe.gap` steps of a probe that failed, the state
        counts as failed without a probe (recorded as skipped)."""
        failed = [h["step"] for h in self.history
                  if (ran := h.get("relearn_probe")) and not ran["passed"] and not ran.get("skipped")]
        if failed and entry["step"] - failed[-1] < self.probe.gap:
            probe = entry["relearn_probe"] = {"skipped": True, "last_failed_at_step": failed[-1], "passed": False}
        else:
            probe = entry["relearn_probe"] = self.probe(self.model)
        if not probe["passed"]:
            if self.action == STOP:
                self.action = entry["action"] = CONTINUE
            entry["best"] = False
        if self.progress:
            self.progress(f"  relearning probe skipped (failed at step {failed[-1]}, gap {self.probe.gap}): continue"
                          if probe.get("skipped") else
                          f"  relearning probe ({probe['steps']} steps on {probe['k']} images): forget "
                          f"{probe['forget_accuracy']:.3f} -> "
                          + ("stop" if probe["passed"] else "comes back: continue"))

    def finish(self) -> None:
        """At the end of training: a run that did not stop cleanly ends on its best state, if it has one."""
        last = self.history[-1] if self.history else None
        if last is None or last["action"] == STOP or self.best is None or last["step"] == self.best_step:
            return
        params = dict(self.model.trainable_parameters())
        with torch.no_grad():
            for name, value in self.best.items():
                params[name].copy_(value)
        self.restored_step = self.best_step

    # --- resume ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"history": list(self.history), "action": self.action}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.action = list(state["history"]), state["action"]

    def save(self, folder) -> None:
        """Write the best state into a checkpoint folder (the trainer calls it on the main process)."""
        if self.best is not None:
            save_file({k: v.contiguous() for k, v in self.best.items()}, str(Path(folder) / BEST_FILE))

    def load(self, folder) -> None:
        path = Path(folder) / BEST_FILE
        self.best = load_file(str(path)) if path.is_file() else None

    def summary(self) -> dict:
        """What the report records: the rule, where the run stopped and every estimate seen."""
        first = next((h["step"] for h in self.history if h["forget_accuracy"] <= self.rule.forget_accuracy_max),
                     None)
        return {"rule": dataclasses.asdict(self.rule), "check_every": self.every, "base_estimate": self.base,
                "stopped_at_step": self.stopped_at, "first_forgotten_at_step": first,
                "restored_best_from_step": self.restored_step,
                "repair_checks": sum(h["action"] == REPAIR for h in self.history),
                "protocol": _protocol(self.evaluator), "base_reused": self.base_reused,
                "confirmation": None if self.confirmation is None else {
                    "protocol": _protocol(self.confirmation[0]), "base": self.confirmation[1]},
                "relearn_probe": None if self.probe is None else self.probe.settings(),
                "checks": self.history}


def _protocol(evaluator) -> dict:
    return {k: evaluator.protocol[k] for k in ("forget_samples_per_target", "retained_samples_per_target", "sampler",
                                               "num_inference_steps", "guidance_scale", "eval_seed")}
