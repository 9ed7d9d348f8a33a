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

import torch
from accelerate import PartialState

from .assets import resolve_model_path
from .config import config_to_dict, load_config
from .distributed import use_cpu
from .errors import UserError
from .outputs import check_output, environment, finalize, prepare_work_dir, scrub, write_json
from .registry import get_family, get_method

TRAINED_FILE = "trained.json"  # in a partial run: the unlearned model is saved; a rerun only evaluates it


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
        model = family.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model.path {cfg.model.path!r} as a {cfg.model.family} diffusers folder "
                        f"({type(exc).__name__}: {first})") from None
    model.set_trainable(cfg.model.subset, cfg.model.lora_rank)
    return model, path


def available_memory() -> int:
    """Bytes of memory available to this process (Linux MemAvailable; else total physical memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(cfg, model) -> None:
    """Refuse image counts whose float32 images (evaluation, stop checks, generated data sets; held in memory)
    cannot fit in the memory available, before anything runs."""
    num_targets = (len(cfg.forget.prompts) + len(cfg.forget.remain_prompts) if cfg.forget.is_concept
                   else model.num_classes)
    c, h, w = model.image_shape()
    per_image = c * h * w * 4
    counts = {"eval.forget_samples / eval.retained_samples_per_class":
              num_targets * max(cfg.eval.forget_samples, cfg.eval.retained_samples_per_class),
              "stop.forget_samples / stop.retained_samples_per_class":
              num_targets * max(cfg.stop.forget_samples, cfg.stop.retained_samples_per_class),
              "data.samples_per_target": num_targets * cfg.data.samples_per_target}
    free = available_memory()
    for keys, n in counts.items():
        if n * per_image > 0.8 * free:
            most = int(0.8 * free / per_image / num_targets)
            raise UserError(f"{keys} ask for up to {n} images of {c}x{h}x{w} ({n * per_image / 2 ** 30:.1f} GiB) "
                            f"for {num_targets} targets, more than the {free / 2 ** 30:.1f} GiB of memory "
                            f"available; valid: at most about {most} per target")


def check_stop(cfg) -> None:
    """In-loop checks sample from the model while it trains; under FSDP2 the shards would have to run the same
    forward calls in every process, which uneven image shares do not guarantee: refused."""
    from .distributed import fsdp_requested

    if cfg.stop.enabled and fsdp_requested():
        raise UserError(f"stop.check_every={cfg.stop.check_every} (in-loop checks) is not supported under FSDP; "
                        "valid: stop.check_every=0 (run all train.steps), or DDP (configs/accelerate/multi_gpu.yaml)")


def check_method(cfg, method_cls) -> None:
    """Refuse a method that cannot forget this kind of target (classes or prompts), or run under FSDP if asked."""
    from .distributed import fsdp_requested
    from .registry import METHODS

    if fsdp_requested() and not method_cls.supports_fsdp:
        valid = sorted(n for n, m in METHODS.items() if m.supports_fsdp)
        raise UserError(f"method {cfg.method.name!r} is not supported under FSDP; use one of: {', '.join(valid)} "
                        "(or DDP: configs/accelerate/multi_gpu.yaml)")

    concept = cfg.forget.is_concept
    if concept and not method_cls.supports_concepts:
        valid = sorted(n for n, m in METHODS.items() if m.supports_concepts)
        raise UserError(f"method {cfg.method.name!r} forgets classes only; for forget.prompts use one of: "
                        f"{', '.join(valid)}")
    if not concept and not method_cls.supports_classes:
        valid = sorted(n for n, m in METHODS.items() if m.supports_classes)
        raise UserError(f"method {cfg.method.name!r} forgets prompts only; for forget.classes use one of: "
                        f"{', '.join(valid)}")


def make_evaluator(cfg, model, judge, base_model, base_path: str, device="cpu", second_signal: bool = True):
    """The evaluator of a run: its judge, targets and FID reference (real digits, or base-model samples), of which
    each process holds (and generates) only its share; with `second_signal`, also the forget targets' reference
    for `fid_forget`."""
    from .data.prompts import generate_cached
    from .evaluation.metrics import image_seed, process_share
    from .evaluation.report import Evaluator
    from .targets import base_model_key, eval_targets, real_reference

    forget, retained = eval_targets(cfg, model, judge.labels)
    if cfg.eval.fid_reference == "real":
        reference, forget_reference = real_reference(cfg, retained), real_reference(cfg, forget)
        return Evaluator(cfg, judge, forget, retained, reference[process_share(len(reference))],
                         "real train images of the targets' labels", device=device,
                         forget_reference=forget_reference[process_share(len(forget_reference))]
                         if second_signal else None)

    def base_samples(targets):  # this process's share of the base model's samples of `targets`, seeds + 50000
        n = cfg.eval.retained_samples_per_class
        rows = process_share(len(targets) * n)
        if not rows:
            return torch.empty(0)  # a process with no share (more processes than reference images)
        conds = torch.stack([targets[r // n].condition for r in rows])
        seeds = [image_seed(cfg.eval.seed + 50_000, targets[r // n].seed_key, r % n) for r in rows]
        return generate_cached(base_model, conds, seeds, cfg.eval, base_model_key(base_path))

    return Evaluator(cfg, judge, forget, retained, base_samples(retained),
                     "base-model samples of the targets (seeds offset by 50000)", device=device,
                     forget_reference=base_samples(forget) if second_signal else None)


def make_monitor(cfg, model, judge, base_path: str, device, progress: bool):
    """The in-loop checks of `cfg.stop` (None when off), scored against `model` before it trains (the base)."""
    from tqdm.auto import tqdm

    from .evaluation.monitor import Monitor, StopRule, cheap_eval_config

    if not cfg.stop.enabled:
        return None
    stop = cfg.stop
    cheap = cheap_eval_config(cfg, stop.forget_samples, stop.retained_samples_per_class, stop.num_inference_steps,
                              stop.seed)
    evaluator = make_evaluator(cheap, model, judge, model, base_path, device=device, second_signal=False)
    base_metrics = evaluator(model.to(device))[0]
    rule = StopRule(stop.forget_accuracy_max, stop.patience, stop.fid_ratio_max, stop.min_steps,
                    max_repair_checks=stop.max_repair_checks)
    return Monitor(model, evaluator, base_metrics, rule, stop.check_every, cfg.train.steps,
                   progress=tqdm.write if progress and PartialState().is_main_process else None)


def unlearn_run(config_path, output, overrides=(), overwrite: bool = False, evaluate: bool = True,
                progress: bool = True) -> dict:
    """Run `diffunlearn unlearn`; returns the report written to OUTPUT/report.json."""
    from .evaluation.report import forgetting_signals, write_model_card
    from .targets import build_sets, check_target, eval_targets
    from .trainer import Trainer, check_process_split

    cfg = load_config(config_path, overrides)
    out = Path(output)
    check_output(out, overwrite)
    method_cls = get_method(cfg.method.name)
    check_method(cfg, method_cls)
    model, base_path = load_model(cfg)
    check_target(cfg, model)
    check_memory(cfg, model)
    # one process, or every process of an `accelerate launch` / torchrun; on CPU (ACCELERATE_USE_CPU=1, or several
    # processes without CUDA) they form one gloo group, as the Trainer's Accelerator does
    state = PartialState(cpu=use_cpu())
    judge = None
    check_stop(cfg)
    if evaluate or cfg.stop.enabled:  # refused before anything is written: a bad judge, labels it cannot score,
        from .evaluation.judges import load_judge  # no FID features
        from .evaluation.report import check_evaluation

        judge = load_judge(cfg.eval, device=state.device)
        check_evaluation(cfg.eval, judge, eval_targets(cfg, model, judge.labels)[1])
    with state.main_process_first():  # generated D_f / D_r: made once by the main process, then read from cache
        forget_set, remain_set = build_sets(cfg, model.to(state.device), base_path)
    check_process_split(state.num_processes, cfg.train.batch_size, forget_set, remain_set)  # before any write

    work = out.parent / f".{out.name}.partial"
    resumed = prepare_work_dir(work, cfg, overwrite, is_main=state.is_main_process)
    state.wait_for_everyone()
    main = state.is_main_process
    if resumed and (work / TRAINED_FILE).is_file():  # trained before, then stopped (e.g. in evaluation)
        model, _ = load_model(load_config(config_path, list(overrides) + [f"model.path={work / 'pipeline'}"]))
        timing = json.loads((work / TRAINED_FILE).read_text())
        device, finish = state.device, state.destroy_process_group
        model.to(device)
    else:
        start = time.perf_counter()
        monitor = make_monitor(cfg, model, judge, base_path, state.device, progress)  # scores the base first
        monitor_setup = time.perf_counter() - start
        trainer = Trainer(cfg, model, method_cls, forget_set, remain_set, work, progress=progress)
        if monitor is not None:
            monitor.clock = trainer.unlearning_seconds
        # the process group stays after training: every process evaluates its share of images
        timing = trainer.train(callback=monitor, finish=False)
        timing["checks"] += monitor_setup
        timing["stop"] = monitor.summary() if monitor is not None else None
        device, finish = trainer.accelerator.device, trainer.finish
        if main:  # in this order, so that a stop anywhere in it resumes correctly
            model.save_pretrained(work / "pipeline")
            write_json(work / TRAINED_FILE, timing)
            shutil.rmtree(work / "checkpoints", ignore_errors=True)
    target = {"forget_prompts": list(cfg.forget.prompts), "anchors": list(cfg.forget.anchors)} \
        if cfg.forget.is_concept else {"forget_classes": list(cfg.forget.classes)}
    # base_model: where the base came from (the Python API sets model.source to the pipeline's origin); absolute
    # paths in the report are replaced below (`scrub`), before the card, gallery and report.json are written
    report = {"method": cfg.method.name, "model": base_path, "base_model": cfg.model.source or cfg.model.path,
              **target, "resumed": resumed, "config": config_to_dict(cfg),
              "environment": environment(state.num_processes, device, cfg.train.mixed_precision)}
    if evaluate:
        start = time.perf_counter()
        base_model, _ = load_model(cfg)
        base_model.to(device)
        evaluator = make_evaluator(cfg, model, judge, base_model, base_path, device=device)
        base_metrics, base_images = evaluator(base_model)
        unl_metrics, unl_images = evaluator(model)
        timing["evaluation"] = time.perf_counter() - start
        report.update(base=base_metrics, unlearned=unl_metrics, protocol=evaluator.protocol)
    finish()
    if not main:
        return {}
    report["timing"] = {"mask": timing.pop("setup"), "unlearning": timing.pop("unlearning"),
                        "stop_checks": timing.pop("checks", None), "evaluation": timing.pop("evaluation", None)}
    report["stop"] = timing.pop("stop", None)
    if evaluate:
        report["signals"] = forgetting_signals(report["base"], report["unlearned"])
    report["method_setup"] = timing
    report = scrub(report)
    write_model_card(work / "pipeline" / "README.md", cfg, report, model.load_hint)
    if evaluate:  # the page opens with the finished report's numbers
        from .evaluation.gallery_page import page_head
        from .evaluation.report import stop_line

        head = page_head(report, work / "losses.jsonl", stop_line(report["stop"], cfg.train.steps))
        evaluator.gallery(work / "gallery", base_images, unl_images, head)
    write_json(work / "report.json", report)
    finalize(work, out)
    return report


def evaluate_model_command(config_path, model_path, output, overrides=()) -> dict:
    """`diffunlearn evaluate`: score one model folder under a config's forget target and protocol (every process of
    a launch scores its share; the main process writes the result)."""
    from .evaluation.judges import load_judge
    from .targets import check_target

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
