"""The base model is evaluated once per protocol: a second run (or check) reads the same metrics and gallery images
from the cache, any change to what the numbers depend on misses it, and eval.reuse_base=false recomputes."""

import re

import torch
from conftest import tiny_ddpm, tiny_overrides
from diffusers import DDIMScheduler

from diffunlearn.config_loading import load_config
from diffunlearn.data.sets import base_model_key
from diffunlearn.evaluation import base_cache
from diffunlearn.evaluation.evaluator import Evaluator, make_evaluator
from diffunlearn.evaluation.judge_loading import load_judge
from diffunlearn.runs.unlearn import unlearn_run

MAIN = "configs/digits/ddpm_sfron.yaml"


def _setup(tiny_ddpm_dir, tiny_classifier_dir, *overrides):
    cfg = load_config(MAIN, tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir) + list(overrides))
    model = tiny_ddpm()
    judge = load_judge(cfg.eval)
    return cfg, model, make_evaluator(cfg, model, judge, model, str(tiny_ddpm_dir))


class Counting:
    """Counts the evaluations that really sample (`Evaluator.__call__`)."""

    def __init__(self, monkeypatch):
        self.calls, real = 0, Evaluator.__call__

        self.whole = 0  # calls that sample every target ("all")

        def call(evaluator, model, part="all"):
            self.calls += 1
            self.whole += part == "all"
            return real(evaluator, model, part)

        monkeypatch.setattr(Evaluator, "__call__", call)


def test_a_second_evaluation_of_the_base_reads_the_first(tiny_ddpm_dir, tiny_classifier_dir, monkeypatch):
    cfg, model, evaluator = _setup(tiny_ddpm_dir, tiny_classifier_dir)
    key = base_model_key(str(tiny_ddpm_dir))
    counting = Counting(monkeypatch)
    metrics, images, reused = base_cache.evaluate_base(evaluator, model, key, "cpu")
    assert not reused and counting.calls == 1
    again, again_images, reused = base_cache.evaluate_base(evaluator, model, key, "cpu")
    assert reused and counting.calls == 1, "the second request must not sample"
    assert again == metrics and set(again["per_target_accuracy"]) == set(range(10))  # class ids stay ints
    assert again_images.keys() == images.keys() and all(torch.equal(again_images[k], images[k]) for k in images)
    _, _, reused = base_cache.evaluate_base(evaluator, model, key, "cpu", reuse=False)
    assert not reused and counting.calls == 2


def test_the_key_follows_everything_the_numbers_depend_on(tiny_ddpm_dir, tiny_classifier_dir):
    cfg, model, evaluator = _setup(tiny_ddpm_dir, tiny_classifier_dir)
    key = base_model_key(str(tiny_ddpm_dir))
    first = base_cache.evaluation_key(evaluator, model, key, "cpu")
    assert re.fullmatch(r"[0-9a-f]{64}", first) and base_cache.evaluation_key(evaluator, model, key, "cpu") == first
    other_scheduler = tiny_ddpm()
    other_scheduler.pipeline.scheduler = DDIMScheduler.from_config(other_scheduler.pipeline.scheduler.config,
                                                                   timestep_spacing="trailing")
    others = [base_cache.evaluation_key(evaluator, model, "other-weights-digest", "cpu"),
              base_cache.evaluation_key(evaluator, other_scheduler, key, "cpu"),
              base_cache.evaluation_key(evaluator, tiny_ddpm().to(torch.float64), key, "cpu")]
    for change in (["eval.seed=5"], ["eval.num_inference_steps=2"], ["eval.guidance_scale=1.5"],
                   ["eval.forget_samples=6"], ["forget.classes=[3]"], ["eval.fid_reference=train"],
                   ["data.test_fraction=0.25"], ["eval.gallery_per_class=1"]):
        others.append(base_cache.evaluation_key(_setup(tiny_ddpm_dir, tiny_classifier_dir, *change)[2], model, key,
                                                "cpu"))
    assert len({first, *others}) == 1 + len(others)


def test_nothing_is_cached_for_a_judge_or_hub_model_it_cannot_identify(tiny_ddpm_dir, tiny_classifier_dir,
                                                                       monkeypatch):
    cfg, model, evaluator = _setup(tiny_ddpm_dir, tiny_classifier_dir)
    assert base_cache.evaluation_key(evaluator, model, "hub:org/not-in-the-cache", "cpu") is None
    evaluator.protocol = {**evaluator.protocol, "judge": {**evaluator.protocol["judge"], "weights_sha256": None}}
    assert base_cache.evaluation_key(evaluator, model, base_model_key(str(tiny_ddpm_dir)), "cpu") is None
    counting = Counting(monkeypatch)
    for _ in range(2):
        assert not base_cache.evaluate_base(evaluator, model, "x", "cpu")[2]
    assert counting.calls == 2


def test_a_rerun_reuses_the_base_metrics_and_says_so(tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    overrides = tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir, steps=2)
    first = unlearn_run(MAIN, tmp_path / "a", overrides, progress=False)
    second = unlearn_run(MAIN, tmp_path / "b", overrides, progress=False)
    assert first["base_reused"] is False and second["base_reused"] is True
    assert second["base"] == first["base"] and second["unlearned"] == first["unlearned"]
    assert "base metrics reused from the cache" in (tmp_path / "b" / "README.md").read_text()
    assert "reused" not in (tmp_path / "a" / "README.md").read_text()
    third = unlearn_run(MAIN, tmp_path / "c", overrides + ["eval.reuse_base=false"], progress=False)
    assert third["base_reused"] is False and third["base"] == first["base"]


def test_a_first_run_with_checks_evaluates_the_base_once_per_protocol_and_claims_no_reuse(
        tmp_path, tiny_ddpm_dir, tiny_classifier_dir, monkeypatch):
    checks = ["stop.check_every=2", "stop.patience=1", "stop.forget_accuracy_max=0.99", "stop.fid_ratio_max=null",
              "stop.forget_samples=4", "stop.retained_samples_per_class=2", "stop.num_inference_steps=2"]
    overrides = tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir, steps=4) + checks
    counting = Counting(monkeypatch)
    report = unlearn_run(MAIN, tmp_path / "a", overrides + ["eval.reuse_base=false"], progress=False)
    # the base under the checks' protocol, the base under the final one (the confirmation's, then the evaluation's),
    # the unlearned model: the final evaluation never samples the base a second time
    assert counting.whole == 3 and report["stop"]["confirmation"] is not None
    assert report["base_reused"] is False and report["stop"]["base_reused"] == {"checks": False,
                                                                               "confirmation": False}
    monkeypatch.setenv("DIFFUNLEARN_CACHE", str(tmp_path / "empty_cache"))  # "a" stored its evaluations
    first = unlearn_run(MAIN, tmp_path / "b", overrides, progress=False)
    assert first["base_reused"] is False, "computed earlier in this run, not read from the cache"
    again = unlearn_run(MAIN, tmp_path / "c", overrides, progress=False)
    assert again["base_reused"] is True and again["base"] == first["base"]
