"""`diffunlearn evaluate CONFIG --model DIR --output FILE`: score one model folder under a run config's protocol."""

from __future__ import annotations

from pathlib import Path

from accelerate import PartialState

from ..config_loading import load_config
from ..distributed import use_cpu
from ..evaluation.evaluator import make_evaluator
from ..models.loading import load_model
from ..outputs import scrub, write_json


def evaluate_model_command(config_path, model_path, output, overrides=()) -> dict:
    """`diffunlearn evaluate`: score one model folder under a config's forget target and protocol (every process of
    a launch scores its share; the main process writes the result)."""
    from ..data.sets import check_target
    from ..evaluation.judge_loading import load_judge

    state = PartialState(cpu=use_cpu())
    cfg = load_config(config_path, overrides)
    base_model, base_path = load_model(cfg)
    check_target(cfg, base_model)
    model_cfg = load_config(config_path, list(overrides) + [f"model.path={model_path}"])
    model, path = load_model(model_cfg)
    evaluator = make_evaluator(cfg, model, load_judge(cfg.eval, device=state.device), base_model.to(state.device),
                               base_path, device=state.device)
    metrics, _ = evaluator(model.to(state.device))
    result = scrub({"model": path, "metrics": metrics, "protocol": evaluator.protocol})
    if state.is_main_process:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(output), result)
    return result
