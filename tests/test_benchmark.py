"""The generation benchmark end to end on tiny models, its protocol check, budget and steps-to-criterion logic."""

import csv
import json
import time

import pytest
import torch
import yaml
from conftest import tiny_overrides

from diffunlearn.benchmarks.generation import run_benchmark
from diffunlearn.benchmarks.generation_config import (Criterion, assert_same_protocol, baseline_budget, first_reaching,
                                                      load_benchmark_config, row_config)
from diffunlearn.benchmarks.generation_report import COLUMNS, acceptance, report_markdown
from diffunlearn.benchmarks.memory import PeakMemory
from diffunlearn.errors import UserError

TINY_BENCH = {
    "run": "configs/digits/ddpm_sfron.yaml",
    "methods": {"sfr_on_k1": {"method": {"name": "sfr_on", "forget_every": 1}, "train": {"steps": 5}},
                "ga": {}, "rl": {}, "salun": {"method": {"mask_batches": 2}},
                "sa": {"method": {"replay_samples": 16, "replay_steps": 2, "fisher_samples": 2,
                                  "fisher_timesteps": 10}}},
    "rt": {"recipe": "configs/recipes/digits_ddpm.yaml",
           "overrides": ["channels=[8,16]", "batch_size=16", "warmup_steps=1"]},
    "eval_every": 2, "eval_also": [1], "periodic_eval": {"forget_samples": 4, "retained_samples_per_class": 2, "num_inference_steps": 2},
    "budget_factor": 1.5, "max_steps": 3, "step_ratio_steps": 2,
}


def history(*points):
    return [{"step": s, "seconds": s / 10, "forget_accuracy": fa, "fid_retained": fid} for s, fa, fid in points]


def test_first_reaching_needs_both_forgetting_and_quality():
    crit = Criterion()
    seq = history((25, 0.50, 1.0), (50, 0.02, 1.40), (75, 0.05, 1.25), (100, 0.00, 1.0))
    assert first_reaching(seq, 1.0, crit)["step"] == 75  # 50: forgotten but FID 1.4 x base; 75: both at the bound
    assert first_reaching(seq, 1.0, Criterion(fid_ratio_max=1.1))["step"] == 100
    assert first_reaching(seq, 0.5, crit) is None
    assert first_reaching([], 1.0, crit) is None


def test_budget_is_ten_times_sfr_on_or_its_run_and_capped(tmp_path):
    bench = load_benchmark_config("configs/digits/benchmark_ddpm.yaml")
    assert baseline_budget(bench, 100, 300) == 1000
    assert baseline_budget(bench, None, 300) == 2000  # never reached: 10 x its 300 steps, capped at max_steps 2000
    bench.max_steps = None
    assert baseline_budget(bench, None, 300) == 3000


def test_acceptance_claims_follow_the_rows():
    def row(method, reached, budget=1000, wall=10.0, seconds=None):
        return {"method": method, "steps_to_criterion": reached, "budget": budget, "wall_s": wall, "steps": budget,
                "seconds_to_criterion": seconds}

    result = {"rows": [row("sfr_on", 100, 300, 20.0, 4.0), row("ga", None), row("sa", 1000), row("rl", 20),
                       row("salun", None, budget=500), row("rt", None, 6000, 800.0)],
              "step_time_ratio": [{"forget_every": 2, "ratio": 1.6}, {"forget_every": 1, "ratio": 2.5}]}
    claims = acceptance(result)
    # reached; salun never, but its budget was capped below 10x; sa exactly 10x; 4 s <= 5% of 800 s; 1.6 <= 2.3
    assert [ok for _, ok in claims] == [True, False, True, True, True]
    assert "salun never reaches it within 500 steps" in claims[1][0] and "(K=2): 1.60" in claims[-1][0]
    result["rows"][2]["steps_to_criterion"] = 900
    assert not acceptance(result)[2][1]
    result["rows"][0]["steps_to_criterion"] = None
    assert [ok for _, ok in acceptance(result)] == [False, True]


def test_peak_memory_sees_an_allocation_and_leaves_out_paused_stretches():
    from diffunlearn.benchmarks.memory import release_freed_memory

    cpu, size = torch.device("cpu"), 200 * 2 ** 20
    release_freed_memory()  # as PeakMemory does on entry: memory freed by earlier tests must not raise the start
    start = PeakMemory.rss()
    with PeakMemory(cpu) as paused:
        paused.pause()
        block = torch.ones(size // 4)  # 200 MiB, touched
        time.sleep(0.1)
        del block
        paused.resume()
    with PeakMemory(cpu) as seen:
        block = torch.ones(size // 4)
        time.sleep(0.1)
        del block
    assert seen.peak >= start + 0.9 * size
    assert paused.peak < start + 0.5 * size


def test_a_sample_in_flight_when_paused_does_not_count(monkeypatch):
    """pause() waits for the sampler's reading in flight: memory allocated right after pause() returns is not
    counted (the race that let a paused 200 MiB block into the peak under load)."""
    import threading

    level, inside = {"rss": 100}, threading.Event()

    def rss():
        if threading.current_thread() is not threading.main_thread():
            inside.set()
            time.sleep(0.05)  # the sampler is mid-reading when the main thread pauses
        return level["rss"]

    monkeypatch.setattr(PeakMemory, "rss", staticmethod(rss))
    with PeakMemory(torch.device("cpu"), interval=0.001) as meter:
        assert inside.wait(2)
        meter.pause()
        level["rss"] = 10_000  # allocated while paused
        time.sleep(0.1)
        level["rss"] = 100
        meter.resume()
    assert meter.peak == 100


def test_peak_memory_of_a_phase_does_not_carry_the_freed_memory_of_the_phases_before_it():
    """Rows run one after another in one process: memory a row freed must not count in the next row's peak."""
    start = PeakMemory.rss()
    blocks = [torch.ones(250_000) for _ in range(400)]  # 400 MiB in 1 MiB blocks, then smaller ones between them
    del blocks[::2]
    small = [torch.ones(20_000) for _ in range(2000)]
    del blocks, small
    with PeakMemory(torch.device("cpu")) as next_row:
        pass
    assert next_row.peak < start + 50 * 2 ** 20, (next_row.mib, start / 2 ** 20)


def test_protocol_mismatch_raises():
    same = {"sampler": "ddim", "num_inference_steps": 25, "guidance_scale": 2.0}
    assert assert_same_protocol({"sfr_on": same, "ga": dict(same)}) == same
    with pytest.raises(RuntimeError, match=r"row 'ga' differs from row 'sfr_on' in \['num_inference_steps'\]"):
        assert_same_protocol({"sfr_on": same, "rl": dict(same), "ga": {**same, "num_inference_steps": 10}})


def test_bad_benchmark_settings_are_refused(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({**TINY_BENCH, "methods": {"ga": {"eval": {"num_inference_steps": 3}}}}))
    with pytest.raises(UserError, match=r"methods.ga has unknown keys \['eval'\]; valid: run, method, train, model, "
                                        "stop"):
        row_config(load_benchmark_config(path), "ga", 5)
    with pytest.raises(UserError, match="unknown config key 'eval_evry'"):
        load_benchmark_config(path, ["eval_evry=3"])
    path.write_text(yaml.safe_dump({**TINY_BENCH, "methods": {"own": {"run": "configs/digits/dit_sfron.yaml"}}}))
    with pytest.raises(UserError, match="methods.own.run 'configs/digits/dit_sfron.yaml' differs from the benchmark's "
                                        "run .* in data, model.path; a row.s run config may change"):
        row_config(load_benchmark_config(path), "own", 5)
    path.write_text(yaml.safe_dump({**TINY_BENCH, "methods": {"esd": {}}}))
    with pytest.raises(UserError, match="method 'esd' forgets prompts only"):
        row_config(load_benchmark_config(path), "esd", 5)
    path.write_text(yaml.safe_dump({**TINY_BENCH, "methods": {"sfr_on": {"method": {"forget_every": 1}}}}))
    with pytest.raises(UserError, match="methods.sfr_on would repeat the first row .*set its method.name: sfr_on"):
        run_benchmark(path, tmp_path / "out", progress=lambda m: None)


def test_benchmark_end_to_end_on_tiny_models(tmp_path, tiny_ddpm_dir, tiny_classifier_dir):
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(TINY_BENCH, sort_keys=False))
    out = tmp_path / "out"
    result = run_benchmark(config, out, tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir, steps=4), rt_steps=2,
                           progress=lambda m: None)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["sfr_on", "sfr_on_k1", "ga", "rl", "salun", "sa", "rt"]
    assert rows["sfr_on"]["steps"] == 4 and rows["rt"]["steps"] == 2
    assert [h["step"] for h in result["histories"]["sfr_on"]] == [1, 2, 4]
    # a variant row of the run's own method: its own config and full run (no budget, no stop), its own claims
    variant = row_config(load_benchmark_config(config), "sfr_on_k1", None)
    assert (variant.method.name, variant.method.forget_every, variant.method.alpha) == ("sfr_on", 1, 10.0)
    assert rows["sfr_on_k1"]["algorithm"] == "sfr_on" and rows["sfr_on_k1"]["steps"] == 4  # train.steps=4 for all
    assert [h["step"] for h in result["histories"]["sfr_on_k1"]] == [1, 2, 4]
    assert any(claim.startswith("SFR-on (sfr_on_k1) reaches the criterion") for claim, _ in acceptance(result))
    budget = result["settings"]["budget"]
    assert budget == baseline_budget(load_benchmark_config(config), rows["sfr_on"]["steps_to_criterion"], 4) <= 3
    for name in ("ga", "rl", "salun", "sa"):
        r, checks = rows[name], result["histories"][name]
        assert r["budget"] == budget and 1 <= r["steps"] <= budget
        assert [h["step"] for h in checks] == [s for s in sorted({1, 2, budget}) if s <= r["steps"]]  # 1, every 2, last
        reached = first_reaching(checks, result["base"]["periodic"]["fid_retained"], Criterion())
        assert r["steps_to_criterion"] == (reached["step"] if reached else None)
        if reached:  # baselines stop at their first check meeting the criterion
            assert r["steps"] == reached["step"]
    for r in rows.values():
        assert 0 <= r["forget_accuracy"] <= 1 and r["fid_retained"] > 0 and r["wall_s"] > 0
        assert r["peak_mem_mib"] > 0 and r["s_per_step"] == pytest.approx(r["wall_s"] / r["steps"])
    assert rows["rt"]["note"].startswith("retrained 2 steps")
    protocol = result["protocol"]
    assert protocol["num_inference_steps"] == 3 and result["periodic_protocol"]["num_inference_steps"] == 2
    ratios = result["step_time_ratio"]
    assert [r["forget_every"] for r in ratios] == [2, 1] and all(r["ratio"] > 0 for r in ratios)
    assert all(r["steps_timed"] == 8 for r in ratios)  # 4 alternating blocks of 2 steps

    with open(out / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0])[:len(COLUMNS)] == COLUMNS and [r["method"] for r in table] == list(rows)
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["protocol"] == protocol and saved["settings"]["rt"]["steps"] == 2
    md = (out / "table.md").read_text()
    assert md == report_markdown(result) + "\n"
    assert "| method | FA | retained acc. | FID_retained (x base) | steps | steps-to-criterion |" in md
    assert "time per step (K=2) / plain fine-tuning step" in md
    assert (out / "fa_fid_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_concept_benchmark_runs_sfr_on_esd_x_and_uce(tmp_path, tiny_classifier_dir):
    from test_sd import tiny_sd

    tiny_sd().save_pretrained(tmp_path / "sd")
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({**load_benchmark_config_raw("configs/digits/benchmark_sd.yaml"),
                                      "eval_every": 2, "step_ratio_steps": 0, "max_steps": 2,
                                      "periodic_eval": TINY_BENCH["periodic_eval"]}, sort_keys=False))
    overrides = [f"model.path={tmp_path / 'sd'}", f"eval.classifier={tiny_classifier_dir}", "train.steps=2",
                 "train.batch_size=4", "method.mask_batches=1", "data.samples_per_target=4",
                 "forget.remain_prompts=['a handwritten digit zero']", "eval.forget_samples=4",
                 "eval.retained_samples_per_class=2", "eval.num_inference_steps=2"]
    with pytest.raises(UserError, match=r"--methods \[.ga.\] not in the benchmark config; valid: esd, uce, sfr_on_lasting \(SFR-on"):
        run_benchmark(config, tmp_path / "bad", overrides, only=["ga"], progress=lambda m: None)
    result = run_benchmark(config, tmp_path / "out", overrides, progress=lambda m: None)
    assert [r["method"] for r in result["rows"]] == ["sfr_on", "esd", "uce", "sfr_on_lasting"]
    assert result["settings"]["methods"]["esd"]["model"] == {"subset": "cross_attention"}
    assert result["protocol"]["forget_targets"] == ["a handwritten digit seven"]
    assert all(r["steps"] >= 1 for r in result["rows"]) and result["step_time_ratio"] == []


def load_benchmark_config_raw(path):
    return yaml.safe_load(open(path))
