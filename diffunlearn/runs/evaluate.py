"""`diffunlearn evaluate [CONFIG] --model DIR --output FILE`: score one model folder under a run config's protocol.

A run folder brings its own config (its forget target, judge, protocol and base); CONFIG is needed for any other
model folder and, for a run folder, must name the run's own target (`run_folder.config_for_model`)."""

from __future__ import annotations

from pathlib import Path

from accelerate import PartialState

from ..config_loading import build_config, config_to_dict
from ..distributed import use_cpu
from ..errors import UserError
from ..evaluation.evaluator import make_evaluator
from ..models.loading import load_model
from ..outputs import pipeline_folder, scrub, write_json
from ..run_folder import IDENTITY_KEY, config_for_model, identity, reusable


def evaluate_model_command(config_path, model_path, output, overrides=(), overwrite: bool = True,
                           reuse: bool = False) -> dict:
    """`diffunlearn evaluate`: score one model folder under its run's (or CONFIG's) forget target and protocol (every
    process of a launch scores its share; the main process writes the result). `reuse`: return what `output` holds
    when it was scored with the same identity (config, both models' weights, version), else score again.

    Raises:
        UserError: an existing `output` without `overwrite`, a CONFIG naming another target than a run folder, or
            any bad config value, model or judge; all before anything is scored.
    """
    from ..data.sets import check_target
    from ..evaluation.judge_loading import load_judge

    if not overwrite and Path(output).exists():
        raise UserError(f"--output {str(output)!r} exists; pass --overwrite to replace it or pick another file")
    state = PartialState(cpu=use_cpu())
    raw = config_for_model(config_path, str(model_path), overrides)
    cfg = build_config(raw, overrides)
    base_model, base_path = load_model(cfg)
    check_target(cfg, base_model)
    model_path = pipeline_folder(model_path)
    model, path = load_model(build_config(raw, list(overrides) + [f"model.path={model_path}"]))
    expected = identity(config_to_dict(cfg), {"base": base_path, "model": model_path})
    done = reusable(output, expected) if reuse else None
    if done is not None:
        return done
    evaluator = make_evaluator(cfg, model, load_judge(cfg.eval, device=state.device), base_model.to(state.device),
                               base_path, device=state.device)
    metrics, _ = evaluator(model.to(state.device))
    result = scrub({"model": path, "forget_targets": evaluator.protocol.get("forget_targets"), "metrics": metrics,
                    "protocol": evaluator.protocol,
                    IDENTITY_KEY: expected})
    if state.is_main_process:
        write_json(Path(output), result)
    return result
