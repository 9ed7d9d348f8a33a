"""Stop when forgotten: the in-loop checks' rule, the retained guard's repair steps, resume, and the run's report."""

import json

import pytest
import torch
from conftest import tiny_ddpm, tiny_overrides
from helpers import make_trainer

from diffunlearn.runs.unlearn import unlearn_run
from diffunlearn.config_loading import load_config
from diffunlearn.errors import UserError
from diffunlearn.evaluation.monitor import CONTINUE, REPAIR, SETTLE, STOP, Monitor, StopRule

MAIN = "configs/digits/ddpm_sfron.yaml"
BASE = {"forget_accuracy": 1.0, "fid_retained": 2.0}


class Scripted:
    """An evaluator whose metrics follow a script (forget accuracy, retained FID) per call: the rule and the loop
    are under test here, not the sampling (which the end-to-end test below runs for real)."""

    protocol = {k: None for k in ("forget_samples_per_target", "retained_samples_per_target", "sampler",
                                  "num_inference_steps", "guidance_scale", "eval_seed")}

    def __init__(self, script):
        self.script, self.calls = list(script), 0

    def __call__(self, model):
        fa, fid = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return {"forget_accuracy": fa, "fid_retained": fid}, {}


def monitor(script, rule, every=2, total=100, model=None):
    return Monitor(model or tiny_ddpm(), Scripted(script), BASE, rule, every, total)


def actions(mon, checks):
    return [mon.record(2 * (i + 1), mon.evaluator(None)[0])["action"] for i in range(checks)]


def test_the_run_stops_at_the_first_check_that_ends_patience_passing_checks():
    mon = monitor([(0.5, 2.0), (0.04, 2.0), (0.2, 2.0), (0.0, 2.0), (0.05, 2.0), (0.0, 2.0)],
                  StopRule(0.05, patience=2))
    assert actions(mon, 5) == [CONTINUE, CONTINUE, CONTINUE, CONTINUE, STOP]  # a failing check resets the streak
    assert [h["forget_streak"] for h in mon.history] == [0, 1, 0, 1, 2]
    assert mon.stopped_at == 10


def test_min_steps_and_stop_false_keep_the_run_going():
    assert actions(monitor([(0.0, 2.0)], StopRule(0.05, patience=1, min_steps=5)), 3) == [CONTINUE, CONTINUE, STOP]
    never = monitor([(0.0, 2.0)], StopRule(0.05, patience=1, stop=False))
    assert actions(never, 4) == [CONTINUE] * 4 and never.stopped_at is None


def test_the_guard_asks_for_repair_while_forgotten_but_retained_quality_is_off():
    # forgotten from the first check, retained FID 1.5x base (synthetic degradation), then back under 1.25x
    mon = monitor([(0.0, 3.0), (0.0, 3.0), (0.0, 2.4), (0.0, 2.4)], StopRule(0.05, patience=2, fid_ratio_max=1.25))
    assert actions(mon, 4) == [REPAIR, REPAIR, STOP, STOP]
    relapse = monitor([(0.0, 3.0), (0.3, 3.0)], StopRule(0.05, patience=1, fid_ratio_max=1.25))
    assert actions(relapse, 2) == [REPAIR, CONTINUE], "the target came back: forgetting resumes"
    no_repair = monitor([(0.0, 3.0)], StopRule(0.05, patience=1, fid_ratio_max=1.25, repair=False))
    assert actions(no_repair, 1) == [CONTINUE]
    budget = monitor([(0.0, 3.0)], StopRule(0.05, patience=1, fid_ratio_max=1.25, max_repair_checks=2))
    assert actions(budget, 3) == [REPAIR, REPAIR, SETTLE], "repair that does not bring it back has a budget"


def test_the_best_state_is_the_lowest_retained_estimate_among_forgotten_checks():
    mon = monitor([(0.5, 1.0), (0.0, 3.0), (0.2, 2.0), (0.0, 2.6), (0.0, 2.8)], StopRule(0.05, patience=9))
    assert [mon.record(s, mon.evaluator(None)[0])["best"] for s in (2, 4, 6, 8, 10)] == [False, True, False, True,
                                                                                          False]
    assert mon.best_step == 8


def _log(path):
    return [json.loads(line) for line in (path / "losses.jsonl").read_text().splitlines()]


def test_the_trainer_stops_at_the_monitors_stop_and_runs_repair_steps_when_asked(tmp_path):
    model = tiny_ddpm()
    trainer = make_trainer(model, tmp_path, ["method.saliency_mask=false", "method.forget_every=1",
                                             "train.steps=20", "train.log_every=1"])
    # checks after steps 2, 4, 6, 8: present, forgotten with degraded retained (repair), repaired, still fine
    mon = Monitor(model, Scripted([(1.0, 2.0), (0.0, 3.0), (0.0, 2.0), (0.0, 2.0)]), BASE,
                  StopRule(0.05, patience=3, fid_ratio_max=1.25), every=2, total_steps=20)
    timing = trainer.train(callback=mon)
    log = _log(tmp_path)
    assert [row["step"] for row in log] == list(range(8)), "stopped right after the check at step 8"
    assert mon.stopped_at == 8 and timing["checks"] >= 0
    kinds = [sorted(k for k in row if k != "step") for row in log]
    assert kinds[:4] == [["forget_loss", "remain_loss"]] * 4
    assert kinds[4:6] == [["repair_loss"]] * 2, "the two steps after the repair verdict are remain-only"
    assert kinds[6:] == [["forget_loss", "remain_loss"]] * 2


def test_a_run_that_cannot_repair_ends_on_its_best_checked_state(tmp_path):
    model = tiny_ddpm()
    trainer = make_trainer(model, tmp_path, ["method.saliency_mask=false", "train.steps=20"])
    seen = {}

    class Recording(Monitor):
        def __call__(self, step):
            seen[step + 1] = {n: p.detach().clone() for n, p in model.trainable_parameters()}
            return super().__call__(step)

    # forgotten from step 4 on; retained 1.5x, 1.3x, 1.4x base: two repair checks, then the budget is spent
    mon = Recording(model, Scripted([(1.0, 2.0), (0.0, 3.0), (0.0, 2.6), (0.0, 2.8)]), BASE,
                    StopRule(0.05, patience=1, fid_ratio_max=1.25, max_repair_checks=2), every=2, total_steps=20)
    trainer.train(callback=mon)
    assert [h["action"] for h in mon.history] == [CONTINUE, REPAIR, REPAIR, SETTLE]
    assert mon.stopped_at == 8 and mon.restored_step == 6 and mon.summary()["restored_best_from_step"] == 6
    for name, p in model.trainable_parameters():
        assert torch.equal(p, seen[6][name]), f"{name} is not the state of the best check"
    assert any(not torch.equal(seen[6][n], seen[8][n]) for n in seen[6])


def test_the_monitor_state_is_checkpointed_and_restored_on_resume(tmp_path):
    overrides = ["method.saliency_mask=false", "train.steps=10", "train.checkpoint_every=4"]
    script = [(1.0, 2.0), (0.0, 3.0)]
    first = make_trainer(tiny_ddpm(), tmp_path, overrides)
    mon = monitor(script, StopRule(0.05, patience=5, fid_ratio_max=1.25), every=2, total=10)
    real_repair = first.repair_step
    first.repair_step = lambda step: (_ for _ in ()).throw(KeyboardInterrupt) if step == 5 else real_repair(step)
    with pytest.raises(KeyboardInterrupt):
        first.train(callback=mon)
    saved = json.loads(next((tmp_path / "checkpoints").glob("step_*/trainer_state.json")).read_text())
    assert saved["step"] == 3 and saved["callback"]["action"] == REPAIR
    again = make_trainer(tiny_ddpm(), tmp_path, overrides)
    restored = monitor(script, StopRule(0.05, patience=5, fid_ratio_max=1.25), every=2, total=10)
    assert again.resume(restored) == 4
    assert restored.repairing and [h["step"] for h in restored.history] == [2, 4]
    assert restored.best_step == 4 and set(restored.best) == set(mon.best)  # the best state travels too
    assert all(torch.equal(restored.best[n], mon.best[n]) for n in mon.best)


def test_a_run_with_checks_reports_where_it_stopped_and_why(tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    # a forget threshold any model meets: the mechanism (real sampling, judge and FID estimate) end to end
    overrides = tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir, steps=12) + [
        "stop.check_every=2", "stop.patience=2", "stop.forget_accuracy_max=0.99", "stop.fid_ratio_max=null",
        "stop.forget_samples=4", "stop.retained_samples_per_class=2", "stop.num_inference_steps=2"]
    report = unlearn_run(MAIN, tmp_path / "run", overrides, progress=False)
    stop = report["stop"]
    assert stop["stopped_at_step"] == 4 and [c["step"] for c in stop["checks"]] == [2, 4]
    assert stop["protocol"]["forget_samples_per_target"] == 4 and stop["protocol"]["eval_seed"] == 777_000
    assert all(0 <= c["forget_accuracy"] <= 0.99 and c["fid_retained"] > 0 for c in stop["checks"])
    assert len((tmp_path / "run" / "losses.jsonl").read_text().splitlines()) == 4
    assert report["timing"]["stop_checks"] > 0
    card = (tmp_path / "run" / "README.md").read_text()
    assert "stopped at step 4 of 12" in card
    assert {"judge", "distance", "agree", "fid_forget_threshold"} <= set(report["signals"])


@pytest.mark.parametrize("override, message", [
    ("stop.check_every=-1", "stop.check_every"), ("stop.patience=0", "stop.patience"),
    ("stop.forget_accuracy_max=1.5", "stop.forget_accuracy_max"), ("stop.fid_ratio_max=0", "stop.fid_ratio_max"),
    ("stop.retained_samples_per_class=1", "stop.retained_samples_per_class=1"), ("stop.every=3", "stop.every"),
])
def test_bad_stop_settings_are_refused_with_one_line(override, message):
    with pytest.raises(UserError, match=message) as err:
        load_config(MAIN, [override])
    assert "\n" not in str(err.value)


def test_checks_are_refused_under_fsdp(monkeypatch):
    from diffunlearn.evaluation.monitor_setup import check_stop

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UserError, match="stop.check_every=0"):
        check_stop(load_config(MAIN))
    check_stop(load_config(MAIN, ["stop.check_every=0"]))


class Confirming:
    """The confirmation evaluator's script: full metrics (FA with its interval and the distance signal's FIDs)."""

    protocol = {"forget_samples_per_target": 64, "retained_samples_per_target": 4, "sampler": "ddim",
                "num_inference_steps": 25, "guidance_scale": 2.0, "eval_seed": 888_000}

    def __init__(self, script):
        self.script, self.calls = list(script), 0

    def __call__(self, model, part="all"):
        assert part == "forget", "a confirmation samples the forget targets only"
        fa, fid_forget = self.script[self.calls]
        self.calls += 1
        return {"forget_accuracy": fa, "forget_accuracy_ci95": [0.0, 1.0], "fid_retained": 2.0,
                "fid_forget": fid_forget, "forget_confidence": 0.1, "forget_none_probability": 0.0}, {}


def test_a_stop_must_hold_under_the_evaluations_sampler_with_agreeing_signals_or_the_run_goes_on():
    from diffunlearn.evaluation.report import stop_line

    # every check reads forgotten; the confirmation's base puts the distance threshold at sqrt(1 * 100) = 10:
    # 1. FA 0.61 under the evaluation's sampler (class 4, seed 8 before this rule); 2. FA 0 but the samples are
    # still close to the target (FID 2 < 10: the signals disagree); 3. FA 0 and far from it (FID 50): stop
    base = {"forget_accuracy": 1.0, "fid_retained": 2.0, "fid_forget": 1.0, "fid_forget_nearest_retained": 100.0}
    confirm = Confirming([(0.61, 40.0), (0.0, 2.0), (0.0, 50.0)])
    mon = Monitor(tiny_ddpm(), Scripted([(0.0, 2.0)]), BASE, StopRule(0.05, patience=1), 2, 100,
                  confirmation=(confirm, base))
    assert [mon(step) for step in (1, 3, 5)] == [False, False, True]
    assert [h["action"] for h in mon.history] == [CONTINUE, CONTINUE, STOP] and confirm.calls == 3
    assert [h["confirmation"]["held"] for h in mon.history] == [False, False, True]
    assert [h["best"] for h in mon.history] == [False, False, True], "an unconfirmed state is not a fallback"
    assert mon.history[1]["confirmation"]["agree"] is False and mon.stopped_at == 6
    summary = mon.summary()
    assert summary["confirmation"]["protocol"]["num_inference_steps"] == 25
    line = stop_line(summary, 100)
    assert "confirmed under the evaluation's sampler (ddim, 25 steps, 64 forget samples" in line
    assert "2 earlier stop(s) not confirmed there, so the run went on" in line


def test_a_check_that_does_not_ask_to_stop_is_not_confirmed():
    confirm = Confirming([])
    mon = Monitor(tiny_ddpm(), Scripted([(0.5, 2.0)]), BASE, StopRule(0.05), 2, 100,
                  confirmation=(confirm, BASE))
    assert not mon(1) and confirm.calls == 0 and "confirmation" not in mon.history[0]


class ByPart(Scripted):
    """A script read by part (row `calls`, set by the test per check): the forget estimate when asked for "forget",
    the retained one for "retained"."""

    def __init__(self, script):
        super().__init__(script)
        self.parts = []

    def __call__(self, model, part="all"):
        self.parts.append(part)
        fa, fid = self.script[self.calls]
        return ({"forget_accuracy": fa} if part == "forget" else {"fid_retained": fid}), {}


def test_checks_sample_the_retained_targets_only_when_the_forget_estimate_passes_and_decide_the_same():
    script = [(0.5, 9.0), (0.0, 3.0), (0.3, 9.0), (0.0, 2.0), (0.0, 2.0)]
    rule = StopRule(0.05, patience=2, fid_ratio_max=1.25)
    full = Monitor(tiny_ddpm(), Scripted(script), BASE, rule, 2, 100)
    lazy_eval = ByPart(script)
    lazy = Monitor(tiny_ddpm(), lazy_eval, BASE, rule, 2, 100, retained_when_forgotten=True)
    for step in range(1, 10, 2):
        full(step)
        lazy_eval.calls = step // 2  # the script's row of this check
        lazy(step)
    assert [h["action"] for h in lazy.history] == [h["action"] for h in full.history] == \
        [CONTINUE, REPAIR, CONTINUE, CONTINUE, STOP]
    assert lazy_eval.parts == ["forget", "forget", "retained", "forget", "forget", "retained", "forget", "retained"]
    assert [h["fid_retained"] for h in lazy.history] == [None, 3.0, None, 2.0, 2.0]
    assert [h["best"] for h in lazy.history] == [h["best"] for h in full.history]


def test_the_progress_bar_ends_where_the_run_stops(tmp_path, capsys):
    model = tiny_ddpm()
    trainer = make_trainer(model, tmp_path, ["method.saliency_mask=false", "train.steps=300"])
    trainer.progress = True
    trainer.train(callback=Monitor(model, Scripted([(1.0, 2.0), (0.0, 2.0)]), BASE, StopRule(0.05), 2, 300))
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "stopped at 4: forgotten" in bar and "4/4" in bar and "100%" in bar, bar


def test_the_card_and_gallery_show_checks_that_did_not_sample_the_retained_targets(tmp_path):
    from diffunlearn.evaluation.gallery_page import page_head
    from diffunlearn.evaluation.report import write_model_card

    lazy = Monitor(tiny_ddpm(), ByPart([(0.5, 9.0), (0.0, 2.0)]), BASE, StopRule(0.05), 2, 100,
                   retained_when_forgotten=True)
    for row, step in enumerate((1, 3)):
        lazy.evaluator.calls = row
        lazy(step)
    report = {"stop": lazy.summary(), "method": "sfr_on", "base_model": "m"}
    cfg = load_config(MAIN)
    write_model_card(tmp_path / "README.md", cfg, report, "ClassConditionalDDPMPipeline.from_pretrained")
    assert "2: 0.500, -, continue; 4: 0.000, 1.00, stop ('-': not sampled" in (tmp_path / "README.md").read_text()
    head = page_head(report, tmp_path / "absent.jsonl")
    assert head.count("<circle") == 3, "two forget estimates and one retained estimate are drawn"
