"""The robustness suite: run attacks against an unlearned model and, beside it, its base model (and RT when given).

`diffunlearn attack [CONFIG] --model DIR --output OUT [--attacks a,b] [--rt DIR] [key=value ...]`: the run config
that unlearned DIR (its forget target, judge and evaluation protocol) is a run folder's own, or CONFIG for any other
model folder (for a run folder CONFIG must name the same target); `attack.NAME.key=value` overrides set
an attack's settings, other overrides go to the run config. Every check runs before anything is written. Results
are built in `.OUT.partial` one attack at a time (`NAME.json`), so a rerun of the same command resumes after the
last finished attack; the folder moves into place when all are done. Outputs: `robustness.json` (per attack: ASR on
the unlearned model, on the base, on RT if given, budget, protocol, curves), `robustness.md` (the table) and
`gallery/`: `index.html` (the ASRs with their intervals and budgets, the relearning curves, the images; see
`gallery.py`), `NAME.png` (the attack's best images on the unlearned model), `NAME_base.png`, `NAME_rt.png`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

from omegaconf import OmegaConf

from ..config_loading import build_config, config_to_dict, parse_overrides, validate
from ..data.sets import build_sets, check_target
from ..errors import UserError
from ..evaluation.judge_loading import load_judge
from ..evaluation.targets import eval_targets
from ..models.loading import load_model, make_trainable
from ..outputs import (atomic_write, check_output, finalize, markdown_table, pipeline_folder, prepare_work_dir, scrub,
                       work_folder, write_json)
from ..registry import ATTACKS, get_attack
from ..run_folder import IDENTITY_KEY, config_for_model, identity, reusable
from .base import AttackContext
from .gallery import asr_text, attack_gallery, save_attack_images

SUITE_FILE = "suite.yaml"  # identity of a partial suite: a rerun with the same one resumes


def applicable(conditioning: str) -> list:
    return sorted(name for name, cls in ATTACKS.load_all().items() if conditioning in cls.conditionings)


def attack_settings(names: list, overrides: list, model, run_cfg) -> dict:
    """{name: validated config} of the chosen attacks against `model` under the run config `run_cfg`;
    `overrides` are the `attack.NAME.key=value` words."""
    conditioning = model.conditioning
    for name in names:
        cls = get_attack(name)
        if conditioning not in cls.conditionings:
            raise UserError(f"attack {name!r} does not apply to the {model.family} family ({conditioning} "
                            f"conditioning); valid: {', '.join(applicable(conditioning))}")
    given = OmegaConf.to_container(parse_overrides(overrides)).get("attack", {}) if overrides else {}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UserError(f"settings for attack(s) {unknown} that are not run; running: {', '.join(names)}")
    settings = {}
    for name in names:
        config = validate(get_attack(name).config_cls(), given.get(name, {}))
        config.check()
        get_attack(name).check_model(config, model, run_cfg)
        settings[name] = config
    return settings


def plan_suite(config_path, model_path, attacks=None, overrides=(), rt_path=None, with_base: bool = True,
               base=None) -> dict:
    """Every check of a suite, before anything runs: the run config (a run folder's own, or CONFIG's), the attacks
    and their settings, the models by role, and the identity a finished suite records. `base`: (an in-memory base
    wrapper, its key) instead of loading the config's `model.path`."""
    run_overrides = [o for o in overrides if not o.startswith("attack.")]
    raw = config_for_model(config_path, str(model_path), run_overrides, base_given=base is not None)
    cfg = build_config(raw, run_overrides)
    base, base_path = load_model(cfg) if base is None else base
    check_target(cfg, base)
    names = list(dict.fromkeys(attacks)) if attacks else applicable(base.conditioning)
    settings = attack_settings(names, [o for o in overrides if o.startswith("attack.")], base, cfg)
    models = {"unlearned": pipeline_folder(model_path), **({"base": base_path} if with_base else {})}
    if rt_path == "auto":  # the base's recipe without the forget classes, trained once and cached
        from ..recipes.retrained import rt_for_run

        rt_path = rt_for_run(cfg)
    if rt_path:
        models["rt"] = pipeline_folder(rt_path)
    budgets = {n: dataclasses.asdict(c) for n, c in settings.items()}
    return {"raw": raw, "run_overrides": run_overrides, "cfg": cfg, "base": base, "base_path": base_path,
            "names": names, "settings": settings, "models": models,
            "identity": identity(config_to_dict(cfg), models, attacks=budgets)}


def run_suite(config_path, model_path, output, attacks=None, overrides=(), overwrite: bool = False, rt_path=None,
              progress=print, with_base: bool = True, plan=None) -> dict:
    """Run the suite; returns what `robustness.json` holds. `with_base=False` attacks `model_path` (and RT) only
    (a benchmark attacks the base once, as a row of its own)."""
    plan = plan or plan_suite(config_path, model_path, attacks, overrides, rt_path, with_base)
    cfg, models, names, settings = plan["cfg"], plan["models"], plan["names"], plan["settings"]
    out = Path(output)
    check_output(out, overwrite)

    def load(role):  # a fresh copy of an attacked model: from its folder, or of the in-memory base
        if str(models[role]).startswith("memory:"):
            model = copy.deepcopy(plan["base"])
            make_trainable(model, cfg)
            return model
        return _load(plan["raw"], plan["run_overrides"], models[role], role)

    loaded = {"base": plan["base"]} if with_base else {}
    loaded.update({role: load(role) for role in ("unlearned", "rt") if role in models})
    judge = load_judge(cfg.eval)
    forget, _ = eval_targets(cfg, plan["base"], judge.labels)
    forget_set, _ = build_sets(cfg, plan["base"], plan["base_path"])

    work = work_folder(out)
    prepare_work_dir(work, plan["identity"], overwrite, file=SUITE_FILE, what="attack suite with other settings",
                     rerun="its command")
    results = {}
    for name in names:
        done = work / f"{name}.json"
        if done.is_file():  # finished before an interruption: resumed
            results[name] = json.loads(done.read_text())
            continue
        cls, entry = get_attack(name), {}
        for role, model in loaded.items():
            start = time.perf_counter()
            context = AttackContext(cfg, model, lambda r=role: load(r), judge, forget, forget_set)
            result = cls(settings[name]).run(context)
            entry[role] = {**result.to_dict(), "seconds": time.perf_counter() - start}
            if result.images is not None:  # before NAME.json: a resumed suite has the images of finished attacks
                save_attack_images(work / "gallery", name, role, result.images)
            if progress:
                progress(f"{name} on {role}: ASR {result.asr:.3f} ({entry[role]['seconds']:.1f} s)")
        results[name] = entry
        write_json(done, entry)
    report = scrub({"models": models, "forget_targets": [t.name for t in forget], "judge": judge.protocol(),
                    "attacks": {n: {"asr": e["unlearned"]["asr"], "asr_ci95": e["unlearned"].get("asr_ci95"),
                                    "base_asr": e.get("base", {}).get("asr"), "rt_asr": e.get("rt", {}).get("asr"),
                                    **e} for n, e in results.items()},
                    IDENTITY_KEY: plan["identity"]})
    write_json(work / "robustness.json", report)
    atomic_write(work / "robustness.md", lambda tmp: tmp.write_text(summary_table(report) + "\n"))
    gallery = work / "gallery"
    atomic_write(gallery / "index.html", lambda tmp: tmp.write_text(attack_gallery(report, gallery)))
    finalize(work, out)
    return report


def suite_result(config_path, model_path, output, attacks=None, overrides=(), rt_path=None, with_base: bool = True,
                 base=None, **kwargs) -> dict:
    """What `output/robustness.json` holds when a suite with the same identity (config, attack settings, model
    weights, version) finished there, else `run_suite` into `output` (replacing what is there): for runs and
    benchmarks that own their output folders."""
    plan = plan_suite(config_path, model_path, attacks, overrides, rt_path, with_base, base)
    done = reusable(Path(output) / "robustness.json", plan["identity"])
    if done is not None:
        return done
    return run_suite(config_path, model_path, output, attacks, overrides, overwrite=True, rt_path=rt_path,
                     with_base=with_base, plan=plan, **kwargs)


def summary_table(report: dict) -> str:
    rows = [[name, asr_text(entry, "unlearned"), asr_text(entry, "base"), asr_text(entry, "rt"),
             f"{entry['unlearned']['seconds']:.1f}", json.dumps(entry["unlearned"]["budget"])]
            for name, entry in report["attacks"].items()]
    return "\n".join(markdown_table(["attack", "ASR unlearned [95% CI]", "ASR base [95% CI]", "ASR RT [95% CI]",
                                      "seconds", "budget"], rows))


def _load(raw, run_overrides, folder, role):
    try:
        model, _ = load_model(build_config(raw, list(run_overrides) + [f"model.path={folder}"]))
    except UserError as exc:
        raise UserError(f"--{'model' if role == 'unlearned' else role}: {exc}") from None
    return model


def check_rt(cfg) -> None:
    """Refuse (one line) an `eval.rt` that cannot be attacked: without `eval.attacks`, or `auto` for a base whose
    recipe is unknown; a folder is checked when the suite plans."""
    if not cfg.eval.rt:
        return
    if not cfg.eval.attacks:
        raise UserError(f"eval.rt {cfg.eval.rt!r} is attacked beside the unlearned model only with eval.attacks; "
                        f"give eval.attacks (valid: {', '.join(sorted(ATTACKS.load_all()))}) or drop eval.rt")
    if cfg.eval.rt == "auto":
        from ..recipes.retrained import base_recipe

        base_recipe(cfg)


def attack_summary(result: dict) -> dict:
    """What a run's report and card keep of a suite: per attack the ASR with its interval, the base's and RT's
    ASR; for relearning also every model's curve, its samples per point and steps to the FA threshold."""
    summary = {name: {key: entry.get(key) for key in ("asr", "asr_ci95", "base_asr", "rt_asr")}
               for name, entry in result["attacks"].items()}
    relearning = result["attacks"].get("relearning")
    if relearning:
        roles = [role for role in ("unlearned", "rt", "base") if role in relearning]
        summary["relearning"].update(
            curves={role: relearning[role]["curve"] for role in roles},
            steps_to_fa={role: relearning[role]["protocol"]["steps_to_fa"] for role in roles},
            fa_threshold=relearning["unlearned"]["protocol"]["fa_threshold"],
            samples_per_point=relearning["unlearned"]["budget"]["samples_per_measurement"])
    return summary
