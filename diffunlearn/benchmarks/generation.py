"""Generation unlearning benchmark: every applicable method on one base model and one forget target, side by side.

Class targets (DDPM, DiT): SFR-on, then the class baselines of the config (GA, RL, SalUn, SA) and RT (retrained from
scratch on D_r with the base recipe). Concept targets (SD): SFR-on and ESD. All rows share the base model, D_f / D_r,
seeds and one evaluation protocol (checked: `assert_same_protocol`). Every `eval_every` steps a cheaper protocol
(`periodic_eval`, scored against the base model under the same cheap protocol) finds the steps-to-criterion: the
first checked step with FA <= 0.05 and FID_retained <= 1.25 x base. A baseline's budget is `budget_factor` x
SFR-on's steps-to-criterion (capped by `max_steps`); final rows use the run's full `eval` section.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from ..config_loading import read_yaml, validate
from ..errors import UserError
from ..evaluation.monitor import Monitor, StopRule, cheap_eval_config
from .generation_config import (GenerationBenchmarkConfig, assert_same_protocol, baseline_budget, first_reaching,
                                load_benchmark_config, row_config, row_method)
from .memory import PeakMemory


class Bench:
    """Shared state of one benchmark run: base model, sets, judge, base metrics, rows and histories."""

    def __init__(self, bench: GenerationBenchmarkConfig, overrides=(), progress=print):
        from accelerate import PartialState

        from ..data.sets import build_sets, check_target
        from ..evaluation.judge_loading import load_judge
        from ..models.loading import load_model

        self.bench, self.overrides, self.progress = bench, list(overrides), progress
        self.base_name = read_yaml(bench.run).get("method", {}).get("name", "sfr_on")
        if self.base_name in bench.methods:
            raise UserError(f"methods.{self.base_name} would repeat the first row (the run config's own method); "
                            f"name a variant row differently and set its method.name: {self.base_name}")
        self.cfg = row_config(bench, self.base_name, None, overrides)
        for name in bench.methods:  # every row's config is checked before anything runs
            row_config(bench, name, None, overrides)
        self.device = PartialState().device
        self.judge = load_judge(self.cfg.eval, device=self.device)
        self.base_model, self.base_path = load_model(self.cfg)
        self.base_model.to(self.device)
        check_target(self.cfg, self.base_model)
        self.forget_set, self.remain_set = build_sets(self.cfg, self.base_model, self.base_path)
        self.protocols, self.periodic_protocols, self.rows, self.histories = {}, {}, [], {}
        self.full, self.cheap = self.evaluators("base", self.cfg)
        self.base_full = self.full(self.base_model)[0]
        self.base_cheap = self.cheap(self.base_model)[0]

    def evaluators(self, name: str, cfg) -> tuple:
        """(full, periodic) evaluators of a row; their protocols are recorded for `assert_same_protocol`."""
        from ..evaluation.evaluator import make_evaluator

        full = make_evaluator(cfg, self.base_model, self.judge, self.base_model, self.base_path, self.device)
        cheap = make_evaluator(cheap_eval_config(cfg, **dataclasses.asdict(self.bench.periodic_eval)),
                               self.base_model, self.judge, self.base_model, self.base_path, self.device,
                               second_signal=False)
        self.protocols[name], self.periodic_protocols[name] = full.protocol, cheap.protocol
        return full, cheap

    def run_method(self, name: str, steps: Optional[int], stop_at_criterion: bool) -> dict:
        """Unlearn a fresh copy of the base model with row `name` for up to `steps` steps (None: the row's own
        train.steps), checking periodically."""
        from ..models.loading import load_model
        from ..registry import get_method
        from ..training.trainer import Trainer

        cfg = row_config(self.bench, name, steps, self.overrides)
        steps = cfg.train.steps
        full, cheap = self.evaluators(name, cfg)
        model, _ = load_model(cfg)
        crit, base_fid = self.bench.criterion, self.base_cheap["fid_retained"]
        rule = StopRule(crit.forget_accuracy_max, 1, crit.fid_ratio_max, stop=stop_at_criterion, repair=False)
        monitor = Monitor(model, cheap, self.base_cheap, rule, self.bench.eval_every, steps, also=self.bench.eval_also,
                          progress=lambda line: self.progress(f"[{name}] {line}"))
        with tempfile.TemporaryDirectory(prefix=f"bench_{name}_") as work, PeakMemory(self.device) as memory:
            trainer = Trainer(cfg, model, get_method(cfg.method.name), self.forget_set, self.remain_set, work,
                              progress=False)
            monitor.clock = trainer.unlearning_seconds

            def check(step: int) -> bool:  # the monitor's checks, outside the row's peak memory
                if not monitor.due(step):
                    return False
                memory.pause()
                stop = monitor(step)
                memory.resume()
                return stop

            timing = trainer.train(callback=check)
        history = monitor.history
        reached = first_reaching(history, base_fid, crit)
        self.histories[name] = history
        done = history[-1]["step"] if history else steps
        return self.add_row(name, full(model)[0], done, timing["unlearning"], memory.mib, budget=steps,
                            reached=reached, algorithm=cfg.method.name)

    def run_rt(self, steps: Optional[int]) -> dict:
        """RT: the base recipe trained from scratch without the forgotten classes."""
        from ..config_loading import load_mapping
        from ..recipes.ddpm import DDPMRecipe, train_ddpm

        rt = self.bench.rt
        if self.cfg.forget.is_concept or self.cfg.model.family != "ddpm":
            raise UserError(f"RT retrains the digits DDPM recipe; the run {self.bench.run!r} is not a DDPM class "
                            "target (set rt.recipe: null)")
        given = load_mapping(rt.recipe, rt.overrides)
        recipe = validate(DDPMRecipe(), {**given, "exclude_classes": list(self.cfg.forget.classes),
                                         **({"steps": steps} if steps else {})})
        full, _ = self.evaluators("rt", self.cfg)
        with PeakMemory(self.device) as memory:
            start = time.perf_counter()
            model = train_ddpm(recipe, progress=False).to(self.device)
            seconds = time.perf_counter() - start
        model.network.eval()
        return self.add_row("rt", full(model)[0], recipe.steps, seconds, memory.mib, budget=recipe.steps,
                            reached=None, algorithm="rt", note=f"retrained {recipe.steps} steps (recipe {rt.recipe})")

    def add_row(self, name, metrics, steps, seconds, mem, budget, reached, algorithm, note="") -> dict:
        base_fid = self.base_full["fid_retained"]
        fa, fid = metrics["forget_accuracy"], metrics["fid_retained"]
        row = {"method": name, "algorithm": algorithm, "forget_accuracy": fa,
               "retained_accuracy": metrics["retained_accuracy"],
               "fid_retained": fid, "fid_ratio": fid / max(base_fid, 1e-12), "steps": steps,
               "steps_to_criterion": reached["step"] if reached else None, "budget": budget,
               "seconds_to_criterion": reached["seconds"] if reached else None, "wall_s": seconds,
               "s_per_step": seconds / max(steps, 1), "peak_mem_mib": mem,
               "criterion_at_end": self.bench.criterion.met(fa, fid, base_fid), "note": note}
        self.rows.append(row)
        return row

    def step_ratio(self, forget_every: Optional[int] = None, blocks: int = 4) -> dict:
        """SFR-on's seconds per step / one plain fine-tuning step (remain loss, same batches, same clip).

        The two run in alternating blocks of an even number of steps (whole K=2 cycles), after two warm-up steps
        each, and the median block is kept, so load from other processes on a shared machine hits both alike.
        """
        from ..models.loading import load_model
        from ..registry import get_method
        from ..training.trainer import Trainer

        size = max(2, 2 * round(self.bench.step_ratio_steps / blocks / 2))
        extra = [f"method.forget_every={forget_every}"] if forget_every else []
        sfr = row_config(self.bench, self.base_name, 2 + size * blocks, [*self.overrides, *extra])
        ft = copy.deepcopy(sfr)
        ft.method = get_method("ft").config_cls(clip=sfr.method.remain_clip)
        trainers, times = {}, {"sfr_on": [], "ft": []}
        with tempfile.TemporaryDirectory(prefix="bench_ratio_") as work:
            for label, cfg in (("sfr_on", sfr), ("ft", ft)):
                (Path(work) / label).mkdir()
                trainer = Trainer(cfg, load_model(cfg)[0], get_method(cfg.method.name), self.forget_set,
                                  self.remain_set, Path(work) / label, progress=False)
                trainer.method.setup()
                for step in range(2):
                    trainer.method.training_step(step)
                trainers[label] = trainer
            for block in range(blocks):
                first = 2 + block * size
                for label, trainer in trainers.items():
                    start = time.perf_counter()
                    logs = [trainer.method.training_step(step) for step in range(first, first + size)]
                    torch.stack([v.float() for row in logs for v in row.values()]).sum().item()  # the one sync
                    times[label].append((time.perf_counter() - start) / size)
        per_step = {label: sorted(t)[len(t) // 2] for label, t in times.items()}
        return {"forget_every": sfr.method.forget_every, "sfr_on_s_per_step": per_step["sfr_on"],
                "ft_s_per_step": per_step["ft"], "ratio": per_step["sfr_on"] / per_step["ft"],
                "steps_timed": size * blocks}


def run_benchmark(config_path, output, overrides=(), bench_overrides=(), rt_steps=None, only=None,
                  progress=print) -> dict:
    """Run SFR-on and every baseline (or those named in `only`, "rt" included), assert one protocol, write
    `table.md`, `results.csv`, `benchmark.json` and the plot."""
    bench = load_benchmark_config(config_path, bench_overrides)
    if rt_steps is not None:
        bench.rt.steps = rt_steps
    if only is not None:
        valid = [*bench.methods, *(["rt"] if bench.rt.recipe else [])]
        if set(only) - set(valid):
            raise UserError(f"--methods {sorted(set(only) - set(valid))} not in the benchmark config; valid: "
                            f"{', '.join(valid)} (SFR-on always runs: it sets the budget)")
        bench.methods = {k: v for k, v in bench.methods.items() if k in only}
        bench.rt.recipe = bench.rt.recipe if "rt" in only else None
    try:
        import matplotlib  # noqa: F401 - checked before hours of work, not after
    except ImportError:
        raise UserError("the benchmark plot needs matplotlib: pip install 'diffunlearn[plot]'") from None
    state = Bench(bench, overrides, progress)
    cfg = state.cfg
    sfr = state.run_method(state.base_name, cfg.train.steps, stop_at_criterion=False)
    budget = baseline_budget(bench, sfr["steps_to_criterion"], sfr["steps"])
    for name in bench.methods:
        variant = row_method(bench, name) == state.base_name
        progress(f"[{name}] " + ("its own steps, like the SFR-on row" if variant else f"budget {budget} steps"))
        if variant:  # another configuration of the run's own method: its full run, as the first row
            state.run_method(name, None, stop_at_criterion=False)
        else:
            state.run_method(name, budget, bench.stop_at_criterion)
    if bench.rt.recipe and not cfg.forget.is_concept:
        progress(f"[rt] retraining from scratch ({bench.rt.steps or 'recipe'} steps)")
        state.run_rt(bench.rt.steps)
    ratios = [state.step_ratio()] if bench.step_ratio_steps else []
    if ratios and ratios[0]["forget_every"] != 1:
        ratios.append(state.step_ratio(forget_every=1))
    result = {"protocol": assert_same_protocol(state.protocols),
              "periodic_protocol": assert_same_protocol(state.periodic_protocols),
              "settings": {**dataclasses.asdict(bench), "overrides": list(overrides), "budget": budget,
                           "device": str(state.device), "torch_threads": torch.get_num_threads()},
              "base": {"full": state.base_full, "periodic": state.base_cheap}, "rows": state.rows,
              "histories": state.histories, "step_time_ratio": ratios}
    from .generation_report import write_outputs

    write_outputs(result, output)
    return result
