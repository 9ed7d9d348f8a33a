"""Building a run's in-loop checks from its `stop` section: the cheap evaluator and the base's estimate, the
confirmation under the final evaluation's protocol, the relearning probe, and what FSDP refuses."""

from __future__ import annotations

import dataclasses

from accelerate import PartialState

from ..data.sets import base_model_key
from ..errors import UserError
from .base_cache import evaluate_base
from .evaluator import make_evaluator
from .monitor import Monitor, StopRule, cheap_eval_config
from .relearn_probe import RelearnProbe


def check_stop(cfg) -> None:
    """In-loop checks sample from the model while it trains; under FSDP2 the shards would have to run the same
    forward calls in every process, which uneven image shares do not guarantee: refused."""
    from ..distributed import fsdp_requested

    if cfg.stop.enabled and fsdp_requested():
        raise UserError(f"stop.check_every={cfg.stop.check_every} (in-loop checks) is not supported under FSDP; "
                        "valid: stop.check_every=0 (run all train.steps), or DDP (configs/accelerate/multi_gpu.yaml)")


def make_monitor(cfg, model, judge, base_path: str, device, progress: bool, targets=None, forget_set=None):
    """The in-loop checks of `cfg.stop` (None when off), scored against `model` before it trains (the base).
    `targets`: the run's (forget, retained) `eval_targets`, when the caller has them; `forget_set`: D_f, for the
    relearning probe (`stop.relearn_probe_steps`)."""
    from tqdm.auto import tqdm

    if not cfg.stop.enabled:
        return None
    stop = cfg.stop
    cheap = cheap_eval_config(cfg, stop.forget_samples, stop.retained_samples_per_class, stop.num_inference_steps,
                              stop.seed)
    evaluator = make_evaluator(cheap, model, judge, model, base_path, device=device, second_signal=False,
                               targets=targets)
    key, reuse = base_model_key(base_path), cfg.eval.reuse_base
    base_metrics, _, reused = evaluate_base(evaluator, model.to(device), key, device, reuse)
    reused, confirmation, final_base = {"checks": reused}, None, None
    if stop.confirm:  # the final evaluation's protocol on seeds of its own, against the base's final evaluation
        final = make_evaluator(cfg, model, judge, model, base_path, device=device, targets=targets)
        final_base = evaluate_base(final, model, key, device, reuse)  # the run's evaluation uses it too
        reused["confirmation"] = final_base[2]
        confirm_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, seed=stop.confirm_seed))
        confirm = make_evaluator(confirm_cfg, model, judge, model, base_path, device=device, targets=targets)
        confirmation = (confirm, {k: v for k, v in final_base[0].items() if not k.endswith("ci95")})
    probe = None
    if stop.relearn_probe_steps:
        probe = RelearnProbe(evaluator, forget_set, stop.relearn_probe_steps, stop.relearn_probe_k,
                             stop.relearn_probe_lr, stop.relearn_probe_max, stop.relearn_probe_seed,
                             gap=stop.relearn_probe_gap)
    rule = StopRule(stop.forget_accuracy_max, stop.patience, stop.fid_ratio_max, stop.min_steps,
                    max_repair_checks=stop.max_repair_checks)
    return Monitor(model, evaluator, base_metrics, rule, stop.check_every, cfg.train.steps,
                   progress=tqdm.write if progress and PartialState().is_main_process else None,
                   confirmation=confirmation, retained_when_forgotten=True, base_reused=reused,
                   base_evaluation=final_base, probe=probe)
