"""Evaluate base and unlearned models under one recorded protocol; write report, gallery and model card."""

from __future__ import annotations

import math
from typing import Optional

from ..outputs import markdown_table
from .metrics import share_interval, with_interval

JUDGE_MAJORITY = 0.5  # the judge says "present" when it recognises the target in more than this share of samples


def forgetting_signals(base: dict, unlearned: dict) -> dict:
    """Two reads of "is the target gone" and whether they agree.

    The judge's: the target is present when its forget accuracy is above `JUDGE_MAJORITY`. The distance's (judge
    verdict-independent): the forget samples' FID to reference images of the target (`fid_forget`) against a
    threshold set by the base model, the geometric mean of its own `fid_forget` (samples of the target) and of
    `fid_forget_nearest_retained` (samples of the closest other target): halfway on a log scale between "the
    target" and "another target". A judge that reads degenerate images as the target (stripes called "seven")
    disagrees with the distance, and so does a judge that misses a target the model still draws.
    """
    fa = unlearned["forget_accuracy"]
    out = {"judge": "present" if fa > JUDGE_MAJORITY else "forgotten", "forget_accuracy": fa,
           "forget_confidence": unlearned.get("forget_confidence"),
           "forget_none_probability": unlearned.get("forget_none_probability")}
    if not all(k in m for m in (base, unlearned) for k in ("fid_forget",)) or \
            "fid_forget_nearest_retained" not in base:
        return {**out, "distance": None, "agree": None}
    threshold = math.sqrt(max(base["fid_forget"], 1e-12) * base["fid_forget_nearest_retained"])
    distance = "forgotten" if unlearned["fid_forget"] > threshold else "present"
    return {**out, "distance": distance, "fid_forget": unlearned["fid_forget"], "fid_forget_base": base["fid_forget"],
            "fid_forget_base_nearest_retained": base["fid_forget_nearest_retained"], "fid_forget_threshold": threshold,
            "agree": distance == out["judge"]}


REFERENCE_WORDS = {"heldout": "held-out", "train": "train", "base": "base-model"}


def fid_label(proto: dict, train: bool = False) -> str:
    """What a FID column is: "FID, digits-judge features, 72 held-out images" (`train`: the train-reference FID,
    `fid_retained_train`)."""
    features = str(proto["fid_features"])
    features = features[:-len("-features")] if features.endswith("-features") else features
    if train:
        return f"FID, {features} features, {proto['fid_train_real_images']} train images"
    kind = REFERENCE_WORDS.get(proto.get("fid_reference"), "reference")
    return f"FID, {features} features, {proto['fid_real_images']} {kind} images"


def metric_rows(base: dict, unlearned: dict, proto: dict) -> list:
    """(key, label) of the headline metrics of a report: accuracies, then each FID named by its features and
    reference (the train-reference FID too when the report has it)."""
    rows = [("forget_accuracy", "forget accuracy"), ("retained_accuracy", "retained accuracy"),
            ("fid_retained", fid_label(proto))]
    if "fid_retained_train" in base and "fid_retained_train" in unlearned:
        rows.append(("fid_retained_train", fid_label(proto, train=True)))
    return rows


def base_reuse_line(report: dict) -> Optional[str]:
    """Which base evaluations came from the cache (`base_cache`), or None."""
    reused = {"evaluation": report.get("base_reused"), **((report.get("stop") or {}).get("base_reused") or {})}
    names = [name for name, hit in reused.items() if hit]
    return ("base metrics reused from the cache (same weights, same protocol): " + ", ".join(names)) if names else None


def signals_line(signals: dict) -> Optional[str]:
    """One sentence on the two signals, or None when there is no distance signal."""
    if signals.get("agree") is None:
        return None
    verdict = "agree" if signals["agree"] else "DISAGREE: look at the gallery before trusting FA"
    return (f"judge: target {signals['judge']} (FA {signals['forget_accuracy']:.3f}, mean confidence "
            f"{signals['forget_confidence']:.3f}); distance: target {signals['distance']} (FID to the target "
            f"{signals['fid_forget']:.2f}, base {signals['fid_forget_base']:.2f}, nearest other target "
            f"{signals['fid_forget_base_nearest_retained']:.2f}, threshold {signals['fid_forget_threshold']:.2f}); "
            f"signals {verdict}")


def stop_line(stop: Optional[dict], steps: int) -> str:
    """One sentence on how long the run trained and why."""
    if not stop:
        return f"ran all {steps} steps (no in-loop checks)"
    rule = stop["rule"]
    best = (f"; it ended on its best checked state, from step {stop['restored_best_from_step']} (forgotten, lowest "
            "retained estimate)") if stop.get("restored_best_from_step") else ""
    if stop["stopped_at_step"] is None:
        return (f"ran all {steps} steps: the in-loop checks never met the stop rule (forget estimate <= "
                f"{rule['forget_accuracy_max']} for {rule['patience']} checks)" + best
                + confirmation_line(stop))
    if stop["checks"][-1]["action"] != "stop":
        return (f"stopped at step {stop['stopped_at_step']} of {steps} after {rule['max_repair_checks']} repair "
                "checks in a row" + best)
    repair = f", {stop['repair_checks']} check(s) asked for repair steps" if stop["repair_checks"] else ""
    return (f"stopped at step {stop['stopped_at_step']} of {steps}: forget estimate <= {rule['forget_accuracy_max']}"
            f" for {rule['patience']} consecutive checks every {stop['check_every']} steps"
            + (f", retained FID estimate <= {rule['fid_ratio_max']} x base" if rule["fid_ratio_max"] else "")
            + repair + confirmation_line(stop))


def confirmation_line(stop: dict) -> str:
    """The stop's confirmation under the evaluation's sampler, and the stops it did not confirm ("" without one)."""
    if not stop.get("confirmation"):
        return ""
    proto = stop["confirmation"]["protocol"]
    tried = [h for h in stop["checks"] if "confirmation" in h]
    refused = sum(not h["confirmation"]["held"] for h in tried)
    last = tried[-1]["confirmation"] if tried and tried[-1]["confirmation"]["held"] else None
    where = (f"{proto['sampler']}, {proto['num_inference_steps']} steps, {proto['forget_samples_per_target']} forget "
             f"samples, seeds from {proto['eval_seed']}")
    text = ""
    if last:
        fa = with_interval(last["forget_accuracy"], last["forget_accuracy_ci95"])
        text = f"; confirmed under the evaluation's sampler ({where}): FA {fa}, distance {last['distance']}"
    return text + (f"; {refused} earlier stop(s) not confirmed there, so the run went on" if refused else "")


def card_data(cfg, report: dict):
    """The card's metadata as huggingface_hub's `ModelCardData`: library, `base_model` (only when the base is a Hub
    repository), tags, and the unlearned model's metrics as `EvalResult`s (the card's `model-index`) with the
    protocol in each metric's name."""
    from huggingface_hub import EvalResult, ModelCardData

    from ..outputs import hub_id

    unl, proto = report.get("unlearned"), report.get("protocol")
    results = None
    if unl and proto:
        target = ", ".join(map(str, cfg.forget.prompts or cfg.forget.classes))
        how = (f"{proto['sampler']} {proto['num_inference_steps']} steps, guidance {proto['guidance_scale']}, "
               f"eval seed {proto['eval_seed']}")
        common = {"task_type": "text-to-image" if cfg.forget.is_concept else "unconditional-image-generation",
                  "task_name": "machine unlearning", "dataset_type": "diffunlearn-forget-target",
                  "dataset_name": f"forget: {target}"}
        results = [EvalResult(metric_type="forget_accuracy", metric_value=round(unl["forget_accuracy"], 4),
                              metric_name=f"forget accuracy ({proto['forget_samples_per_target']} samples per forgotten "
                                          f"target, {how}, judge {proto['judge'].get('kind')} "
                                          f"{proto['judge'].get('source')})", **common),
                   EvalResult(metric_type="retained_accuracy", metric_value=round(unl["retained_accuracy"], 4),
                              metric_name=f"retained accuracy ({proto['retained_samples_per_target']} samples per "
                                          f"retained target, {how})", **common),
                   EvalResult(metric_type="fid", metric_value=round(unl["fid_retained"], 4),
                              metric_name=f"FID of retained targets ({proto['fid_features']}, "
                                          f"{proto['fid_real_images']} reference images: {proto['fid_real_source']})",
                              **common)]
    base = report.get("base_model")
    return ModelCardData(library_name="diffusers", tags=["diffunlearn", "machine-unlearning", cfg.method.name],
                         base_model=base if hub_id(base) else None, eval_results=results,
                         model_name=f"{cfg.model.family}-{cfg.method.name}-unlearned" if results else None)


def card_metadata(cfg, report: dict) -> dict:
    """The card's YAML front matter as a mapping (`card_data(...).to_dict()`)."""
    return card_data(cfg, report).to_dict()


def write_model_card(path, cfg, report: dict, load_hint: str) -> None:
    """A Hugging Face model card (`README.md`: huggingface_hub's `ModelCard` with `card_data` as front matter) for
    the unlearned pipeline; `report` has no absolute paths (see `outputs.scrub`)."""
    from huggingface_hub import ModelCard

    base, unl = report.get("base"), report.get("unlearned")
    what = "prompt(s)" if cfg.forget.is_concept else "class(es)"
    forgotten = ", ".join(str(c) for c in (cfg.forget.prompts or cfg.forget.classes))
    lines = ["---", card_data(cfg, report).to_yaml().strip(), "---", "",
             f"# {cfg.model.family} with {what} {forgotten} unlearned ({cfg.method.name})", "",
             f"- Base model: `{report.get('base_model')}`",
             f"- Method: `{cfg.method.name}`, optimizer {cfg.train.optimizer} lr {cfg.train.lr}, seed {cfg.seed}; "
             + stop_line(report.get("stop"), cfg.train.steps),
             f"- Forgotten {what}: {forgotten}"
             + (f" (mapped onto {', '.join(cfg.forget.anchors)})" if cfg.forget.is_concept else ""), ""]
    if base and unl:
        def cell(side, key):  # accuracies with their Wilson 95% interval
            return with_interval(side[key], side.get(f"{key}_ci95")) if "fid" not in key else f"{side[key]:.4f}"

        proto = report["protocol"]
        lines += markdown_table(["metric", "base [95% CI]", "unlearned [95% CI]"],
                                [[label, cell(base, key), cell(unl, key)]
                                 for key, label in metric_rows(base, unl, proto)])
        lines += ["", f"Protocol: {proto['sampler']} {proto['num_inference_steps']} steps, guidance "
                      f"{proto['guidance_scale']}, FID on {proto['fid_features']} features "
                      f"(dim {proto['feature_dim']}), {proto['fid_real_images']} real vs "
                      f"{proto['fid_generated_images']} generated images; full protocol in `report.json`.", ""]
        signals = signals_line(report.get("signals") or {})
        lines += [f"Forgetting signals: {signals}.", ""] if signals else []
        reuse = base_reuse_line(report)
        lines += [f"The {reuse}.", ""] if reuse else []
    checks = (report.get("stop") or {}).get("checks") or []
    if checks:
        lines += ["In-loop checks (step: forget estimate, retained FID estimate / base, next): "
                  + "; ".join(f"{c['step']}: {c['forget_accuracy']:.3f}, "
                              f"{'-' if c['fid_ratio'] is None else format(c['fid_ratio'], '.2f')}, {c['action']}"
                              for c in checks) + " ('-': not sampled while the forget estimate fails).", ""]
    robustness = report.get("robustness") or {}
    if robustness:
        lines += ["Robustness (attack success rate: share of attacked samples the judge recognises as the forgotten "
                  "target; `robustness/robustness.json` has budgets, protocols and curves):", ""]
        with_rt = any(e.get("rt_asr") is not None for e in robustness.values())
        lines += markdown_table(["attack", "unlearned [95% CI]", "base"] + (["RT"] if with_rt else []),
                                [[name, with_interval(e["asr"], e.get("asr_ci95")), f"{e['base_asr']:.3f}"]
                                 + ([_share(e.get("rt_asr"))] if with_rt else [])
                                 for name, e in robustness.items()]) + [""]
        lines += relearning_lines(robustness.get("relearning") or {})
    lines += [f"Load it with {load_hint}.", ""]
    ModelCard("\n".join(lines)).save(path)


def _share(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def relearning_lines(entry: dict) -> list:
    """How lasting the forgetting is: the relearning curve of the unlearned model beside RT's and the base's (FA
    after n fine-tune steps on k images of the target, Wilson 95% intervals) and the steps to the FA threshold."""
    curves, n = entry.get("curves") or {}, entry.get("samples_per_point") or 0
    if "unlearned" not in curves:
        return []
    roles = [r for r in ("unlearned", "rt", "base") if r in curves]
    names = {"unlearned": "unlearned", "rt": "RT (never learnt it)", "base": "base"}
    fa = {r: {(p["k"], p["step"]): p["forget_accuracy"] for p in curves[r]} for r in roles}
    rows = [[str(k), str(step)] + [with_interval(fa[r][(k, step)], share_interval(fa[r][(k, step)], n))
                                   if (k, step) in fa[r] else "-" for r in roles]
            for k, step in sorted(fa["unlearned"])]
    steps = entry.get("steps_to_fa") or {}
    reach = "; ".join(f"{names[r]} " + " / ".join(f"k={k}: {'never' if v is None else v}"
                                                   for k, v in (steps.get(r) or {}).items()) for r in roles)
    return (["Relearning (forget accuracy after fine-tuning a copy for n steps on k images of the target; "
             f"95% intervals on {n} samples per point):", ""]
            + markdown_table(["k", "steps", *(f"{names[r]} [95% CI]" for r in roles)], rows)
            + ["", f"Steps to FA {entry.get('fa_threshold', 0.5)}: {reach}.", ""])
