"""One unlearning run, read top to bottom as prepare -> train -> evaluate -> write: `diffunlearn unlearn CONFIG
--output DIR`, `diffunlearn.unlearn(pipe, ...)` and the benchmarks all call `unlearn_run`, with a config path and
overrides or a validated `RunConfig`, and optionally an in-memory base model.

- `prepare`: every check (config, output folder, method, model, target, memory, FSDP, judge, batch split), the
  evaluation targets computed once, D_f / D_r built, and only then the work folder.
- `train`: the base is scored by the in-loop monitor, the method runs in the `Trainer`, the unlearned model is saved
  (a rerun of a run that stopped after this point only evaluates).
- `evaluate`: base and unlearned model under the run's protocol.
- `write`: report, model card and gallery, then the folder is moved into place.

Outputs are built in a hidden sibling folder `.NAME.partial` (which also holds the checkpoints a resumed run picks
up) and moved into place only when complete.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from accelerate import PartialState

from ..config import RunConfig
from ..config_loading import config_to_dict, load_config
from ..data.sets import base_model_key, build_sets, check_target
from ..distributed import use_cpu
from ..errors import UserError
from ..evaluation.base_cache import evaluate_base
from ..evaluation.evaluator import check_evaluation, make_evaluator
from ..evaluation.gallery_page import page_head
from ..evaluation.judge_loading import load_judge
from ..evaluation.monitor_setup import check_stop, make_monitor
from ..evaluation.report import forgetting_signals, stop_line, write_model_card
from ..evaluation.targets import eval_targets
from ..models.loading import load_model, trainable_copy
from ..outputs import check_output, environment, finalize, prepare_work_dir, scrub, work_folder, write_json
from ..registry import check_method, get_method
from ..robustness.suite import attack_settings, attack_summary, check_rt, suite_result
from ..run_folder import IDENTITY_KEY, identity
from ..training.step import check_process_split
from ..training.trainer import Trainer

TRAINED_FILE = "trained.json"  # in a partial run: the unlearned model is saved; a rerun only evaluates it


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


@dataclass
class Run:
    """What `prepare` established for the rest of the run."""

    cfg: Any  # the validated RunConfig (also recorded in the work folder's config.yaml)
    out: Path
    work: Path
    method_cls: Any
    model: Any  # the wrapper being unlearned (the base until `train`)
    base_path: str  # the base's folder, Hub id, or in-memory key (`memory:sha256:...`)
    state: PartialState
    judge: Any  # None when the run neither evaluates nor checks in the loop
    targets: Optional[tuple]  # (forget, retained) evaluation targets, with the judge
    forget_set: Any
    remain_set: Any
    resumed: bool
    base: Any = None  # an in-memory base (the Python API's pipeline), never modified; None: loaded from the config
    base_evaluation: Optional[tuple] = None  # (metrics, images, reused) of the base, when the stop's confirmation made it


def prepare(config, output, overrides=(), overwrite: bool = False, evaluate: bool = True, base=None) -> Run:
    """Every check of a run, before anything is written; then the work folder (resumed when it holds this run).
    `config`: a YAML path (with `overrides`) or a validated `RunConfig` (the Python API's); `base`: an in-memory
    model wrapper to unlearn (a copy is trained) instead of loading `model.path`."""
    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
    out = Path(output)
    check_output(out, overwrite)
    method_cls = get_method(cfg.method.name)
    check_method(cfg, method_cls)
    model, base_path = load_model(cfg) if base is None else trainable_copy(base, cfg)
    check_target(cfg, model)
    check_memory(cfg, model)
    check_stop(cfg)
    if cfg.eval.attacks:  # names, and whether they fit the family
        attack_settings(list(cfg.eval.attacks), [], model, cfg)
    check_rt(cfg)
    # one process, or every process of an `accelerate launch` / torchrun; on CPU (ACCELERATE_USE_CPU=1, or several
    # processes without CUDA) they form one gloo group, as the Trainer's Accelerator does
    state = PartialState(cpu=use_cpu())
    judge = targets = None
    if evaluate or cfg.stop.enabled:  # a bad judge, labels it cannot score, no FID features
        judge = load_judge(cfg.eval, device=state.device)
        targets = eval_targets(cfg, model, judge.labels)
        check_evaluation(cfg.eval, judge, targets[1])
    with state.main_process_first():  # generated D_f / D_r: made once by the main process, then read from cache
        forget_set, remain_set = build_sets(cfg, model.to(state.device), base_path)
    check_process_split(state.num_processes, cfg.train.batch_size, forget_set, remain_set)

    work = work_folder(out)
    resumed = prepare_work_dir(work, config_to_dict(cfg), overwrite, is_main=state.is_main_process)
    state.wait_for_everyone()
    return Run(cfg, out, work, method_cls, model, base_path, state, judge, targets, forget_set, remain_set, resumed,
               base)


def train(run: Run, progress: bool = True) -> tuple:
    """Unlearn (or, in a rerun of a trained run, load the saved result); returns (timing, device, finish), where
    `finish` ends the process group after evaluation."""
    cfg, work = run.cfg, run.work
    if run.resumed and (work / TRAINED_FILE).is_file():  # trained before, then stopped (e.g. in evaluation)
        trained = copy.deepcopy(cfg)
        trained.model.path = str(work)
        run.model, _ = load_model(trained)
        run.model.to(run.state.device)
        return json.loads((work / TRAINED_FILE).read_text()), run.state.device, run.state.destroy_process_group
    start = time.perf_counter()
    monitor = make_monitor(cfg, run.model, run.judge, run.base_path, run.state.device, progress,
                           targets=run.targets, forget_set=run.forget_set)  # scores the base first
    monitor_setup = time.perf_counter() - start
    trainer = Trainer(cfg, run.model, run.method_cls, run.forget_set, run.remain_set, work, progress=progress)
    if monitor is not None:
        monitor.clock = trainer.unlearning_seconds
        run.base_evaluation = monitor.base_evaluation
    # the process group stays after training: every process evaluates its share of images
    timing = trainer.train(callback=monitor, finish=False)
    timing["checks"] += monitor_setup
    timing["stop"] = monitor.summary() if monitor is not None else None
    if run.state.is_main_process:  # in this order, so that a stop anywhere in it resumes correctly
        run.model.save_pretrained(work)  # the pipeline at the run folder's root
        write_json(work / TRAINED_FILE, timing)
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
    return timing, trainer.accelerator.device, trainer.finish


def evaluate_models(run: Run, device) -> tuple:
    """(base metrics, unlearned metrics, evaluator, base images, unlearned images, base reused) under the run's
    protocol; the base's are those the stop's confirmation made in this run, else they come from the cache when an
    earlier run evaluated the same weights under the same protocol (`evaluation.base_cache`, unless
    eval.reuse_base=false)."""
    base_model = load_model(run.cfg)[0] if run.base is None else run.base
    base_model.to(device)
    evaluator = make_evaluator(run.cfg, run.model, run.judge, base_model, run.base_path, device=device,
                               targets=run.targets)
    base_metrics, base_images, reused = run.base_evaluation or evaluate_base(
        evaluator, base_model, base_model_key(run.base_path), device, run.cfg.eval.reuse_base)
    unlearned_metrics, unlearned_images = evaluator(run.model)
    return base_metrics, unlearned_metrics, evaluator, base_images, unlearned_images, reused


def build_report(run: Run, timing: dict, device, evaluation=None) -> dict:
    """The report of a finished run (absolute paths scrubbed)."""
    cfg = run.cfg
    target = {"forget_prompts": list(cfg.forget.prompts), "anchors": list(cfg.forget.anchors)} \
        if cfg.forget.is_concept else {"forget_classes": list(cfg.forget.classes)}
    # base_model: where the base came from (the Python API sets model.source to the pipeline's origin)
    report = {"method": cfg.method.name, "model": run.base_path, "base_model": cfg.model.source or cfg.model.path,
              **target, "resumed": run.resumed, "config": config_to_dict(cfg),
              "environment": environment(run.state.num_processes, device, cfg.train.mixed_precision)}
    if evaluation is not None:
        base_metrics, unlearned_metrics, evaluator = evaluation[:3]
        report.update(base=base_metrics, unlearned=unlearned_metrics, protocol=evaluator.protocol,
                      base_reused=evaluation[5])
    report["timing"] = {"mask": timing.pop("setup"), "unlearning": timing.pop("unlearning"),
                        "stop_checks": timing.pop("checks", None), "evaluation": timing.pop("evaluation", None)}
    report["stop"] = timing.pop("stop", None)
    if evaluation is not None:
        report["signals"] = forgetting_signals(report["base"], report["unlearned"])
    report["method_setup"] = timing
    report[IDENTITY_KEY] = identity(report["config"], {"base": run.base_path})  # when a benchmark may reuse it
    return scrub(report)


def attack(run: Run, progress: bool = True) -> dict:
    """The robustness suite (`eval.attacks`, default settings) on the unlearned pipeline, inside the work folder (a
    rerun resumes it with the run); returns the ASR summary for the report and the model card."""
    base = None if run.base is None else (run.base, run.base_path)
    result = suite_result(None, run.work, run.work / "robustness", list(run.cfg.eval.attacks), base=base,
                          rt_path=run.cfg.eval.rt, progress=print if progress else None)  # the work folder's
    return attack_summary(result)  # config.yaml is the run's


def write(run: Run, report: dict, evaluation=None) -> None:
    """Model card, gallery (opening with the report's numbers) and report.json; then the folder moves into place."""
    work, cfg = run.work, run.cfg
    write_model_card(work / "README.md", cfg, report, run.model.load_hint)
    if evaluation is not None:
        evaluator, base_images, unlearned_images = evaluation[2:5]
        head = page_head(report, work / "losses.jsonl", stop_line(report["stop"], cfg.train.steps))
        evaluator.gallery(work / "gallery", base_images, unlearned_images, head)
    write_json(work / "report.json", report)
    finalize(work, run.out)


def unlearn_run(config, output, overrides=(), overwrite: bool = False, evaluate: bool = True,
                progress: bool = True, base=None) -> dict:
    """Run `diffunlearn unlearn`; returns the report written to OUTPUT/report.json ({} in the other processes of a
    launch: the main one reports). `config`: a YAML path (with `overrides`) or a validated `RunConfig`; `base`: an
    in-memory model wrapper to unlearn instead of `model.path` (it is never modified)."""
    run = prepare(config, output, overrides, overwrite, evaluate, base)
    timing, device, finish = train(run, progress)
    evaluation = None
    if evaluate:
        start = time.perf_counter()
        evaluation = evaluate_models(run, device)
        timing["evaluation"] = time.perf_counter() - start
    finish()
    if not run.state.is_main_process:
        return {}
    report = build_report(run, timing, device, evaluation)
    if run.cfg.eval.attacks:
        report["robustness"] = attack(run, progress)
    write(run, report, evaluation)
    return report
