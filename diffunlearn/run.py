"""One unlearning run end to end: validate everything, unlearn, evaluate base and unlearned, write outputs.

Outputs are built in a hidden sibling folder `.NAME.partial` (which also holds the checkpoints a resumed run picks
up) and moved into place only when complete. All input checks happen before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import yaml
from accelerate import PartialState

from .assets import resolve_model_path
from .config import config_to_dict, config_to_yaml, load_config
from .data import load_digits_splits
from .data.digits import DIGIT_NAMES
from .errors import UserError
from .registry import get_family, get_method

CONFIG_FILE = "config.yaml"


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickle_only(path: str) -> None:
    """Weights are only loaded from safetensors: a folder whose weights are all pickles is refused."""
    folder = Path(path)
    if not folder.is_dir():
        return
    pickles = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles and not any(folder.rglob("*.safetensors")):
        raise UserError(f"refusing pickle checkpoint(s) {pickles} in {path!r}: only safetensors weights are "
                        "loaded (convert them with safetensors.torch.save_file)")


def load_model(cfg):
    """Load the base model wrapper named by `cfg.model` (never modified on disk)."""
    from safetensors import SafetensorError

    family = get_family(cfg.model.family)
    path = resolve_model_path(cfg.model.path)
    refuse_pickle_only(path)
    try:
        return family.from_pretrained(path), path
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model.path {cfg.model.path!r} as a {cfg.model.family} diffusers folder "
                        f"({type(exc).__name__}: {first})") from None


def check_forget_target(cfg, model) -> None:
    bad = [c for c in cfg.forget.classes if c >= model.num_classes]
    if bad:
        raise UserError(f"forget.classes {bad} out of range; valid: 0..{model.num_classes - 1}")
    if len(cfg.forget.classes) >= model.num_classes:
        raise UserError(f"forget.classes {list(cfg.forget.classes)} covers every class; the remain set is empty")


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {str(out)!r} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--output {str(out)!r} already holds a run; pass --overwrite to replace it or pick "
                        "another folder")
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--output {str(out)!r} is not writable (no write permission on {str(parent)!r})")


def prepare_work_dir(work: Path, cfg, overwrite: bool, is_main: bool = True) -> bool:
    """Create the partial-run folder (main process only), or reuse it to resume; returns True when resuming."""
    if work.is_dir():
        saved = yaml.safe_load((work / CONFIG_FILE).read_text()) if (work / CONFIG_FILE).is_file() else None
        if saved == config_to_dict(cfg):
            return True
        if not overwrite:
            raise UserError(f"an unfinished run with a different config is in {str(work)!r}; rerun with its "
                            "config to resume, or pass --overwrite to discard it")
    if is_main:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / CONFIG_FILE).write_text(config_to_yaml(cfg))
    return False


def finalize(work: Path, out: Path) -> None:
    """Move the finished run into place; an existing folder (only with --overwrite) is replaced at the end."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out)


def make_evaluator(cfg, model, train, device="cpu"):
    """The evaluator of a run: judge classifier, FID against the real train images of the retained classes."""
    from .evaluation.report import Evaluator

    return Evaluator(cfg, resolve_model_path(cfg.eval.classifier),
                     train.select_classes(cfg.forget.classes, keep=False).images, DIGIT_NAMES[:model.num_classes],
                     device=device)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def unlearn_run(config_path, output, overrides=(), overwrite: bool = False, evaluate: bool = True,
                progress: bool = True) -> dict:
    """Run `diffunlearn unlearn`; returns the report written to OUTPUT/report.json."""
    from .evaluation.report import write_model_card
    from .trainer import Trainer, check_process_split

    cfg = load_config(config_path, overrides)
    out = Path(output)
    check_output(out, overwrite)
    method_cls = get_method(cfg.method.name)
    model, base_path = load_model(cfg)
    check_forget_target(cfg, model)
    if evaluate:
        resolve_model_path(cfg.eval.classifier)  # a bad judge path is refused before anything is written
    train, _ = load_digits_splits(cfg.data.split_seed, cfg.data.test_fraction)
    forget_set, remain_set = train.forget_remain(cfg.forget.classes)

    work = out.parent / f".{out.name}.partial"
    state = PartialState()  # one process, or every process of an `accelerate launch`
    check_process_split(state.num_processes, cfg.train.batch_size, forget_set, remain_set)  # before any write
    resumed = prepare_work_dir(work, cfg, overwrite, is_main=state.is_main_process)
    state.wait_for_everyone()
    trainer = Trainer(cfg, model, method_cls, forget_set, remain_set, work, progress=progress)
    timing = trainer.train()
    if not trainer.accelerator.is_main_process:
        return {}
    model.save_pretrained(work / "pipeline")
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    report = {"method": cfg.method.name, "model": base_path, "forget_classes": list(cfg.forget.classes),
              "resumed": resumed, "config": config_to_dict(cfg)}
    if evaluate:
        start = time.perf_counter()
        evaluator = make_evaluator(cfg, model, train, device=trainer.accelerator.device)
        base_model, _ = load_model(cfg)
        base_metrics, base_images = evaluator(base_model.to(trainer.accelerator.device))
        unl_metrics, unl_images = evaluator(model)
        evaluator.gallery(work / "gallery", base_images, unl_images)
        timing["evaluation"] = time.perf_counter() - start
        report.update(base=base_metrics, unlearned=unl_metrics, protocol=evaluator.protocol)
    report["timing"] = {"mask": timing.pop("setup"), "unlearning": timing.pop("unlearning"),
                        "evaluation": timing.pop("evaluation", None)}
    report["method_setup"] = timing
    write_model_card(work / "pipeline" / "README.md", cfg, base_path, report, model.load_hint)
    write_json(work / "report.json", report)
    finalize(work, out)
    return report


def evaluate_model_command(config_path, model_path, output, overrides=()) -> dict:
    """`diffunlearn evaluate`: score one model folder under a config's forget target and protocol."""
    cfg = load_config(config_path, list(overrides) + [f"model.path={model_path}"])
    model, path = load_model(cfg)
    check_forget_target(cfg, model)
    train, _ = load_digits_splits(cfg.data.split_seed, cfg.data.test_fraction)
    evaluator = make_evaluator(cfg, model, train)
    metrics, _ = evaluator(model)
    result = {"model": path, "metrics": metrics, "protocol": evaluator.protocol}
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(output), result)
    return result
