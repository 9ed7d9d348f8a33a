"""The GPU benchmark's pieces on a CPU: the real configs it builds, the masked update it times, the memory model
behind its batch limits, its tables, and a tiny end-to-end run of every section (the full-size run needs a GPU;
its figures are in docs/gpu.md)."""

import importlib.util
import json

import pytest
import torch

from diffunlearn.benchmarks.gpu.cases import Case, cross_attention_modules, set_subset
from diffunlearn.benchmarks.gpu.fit import card_cell, estimate, memory_line
from diffunlearn.benchmarks.gpu.specs import SPECS, get_spec
from diffunlearn.benchmarks.gpu.steps import masked_update
from diffunlearn.errors import UserError


def load_cli():
    spec = importlib.util.spec_from_file_location("gpu_step_bench", "eval/gpu_step_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family, millions", [("sd", 859.52), ("sdxl", 2567.46)])
def test_real_unet_configs_have_the_published_parameter_counts(family, millions):
    """SD v1.4's UNet has 859.52M parameters and SDXL base's 2567.46M: the configs are the real ones."""
    import diffusers

    spec = SPECS[family]
    with torch.device("meta"):
        net = getattr(diffusers, spec.network_class)(**spec.network)
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 2) == millions


@pytest.mark.parametrize("family", sorted(SPECS))
def test_every_family_trains_one_step_per_subset(family):
    """Each tiny case takes an SFR-on forget loss and a task loss with finite values, for each of its subsets."""
    case = Case(get_spec(family, tiny=True), "cpu")
    counts = {}
    for subset in case.spec.subsets:  # lora last: it adds adapters
        params = set_subset(case.spec, case.network, subset)
        counts[subset] = sum(p.numel() for _, p in params)
        batch = case.batch(2)
        loss = case.forget_loss(batch) + case.task_loss(batch)
        loss.backward()
        assert torch.isfinite(loss) and all(p.grad is not None for _, p in params), subset
        case.network.zero_grad(set_to_none=True)
    assert counts["all"] > max(v for k, v in counts.items() if k != "all") > 0
    if "cross_attention" in counts:
        assert cross_attention_modules(case.spec, case.network)
    with pytest.raises(UserError, match="valid"):
        set_subset(case.spec, case.network, "everything")


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_the_benchmarked_cross_attention_is_the_familys_own_subset(family):
    """The weights the benchmark trains for `cross_attention` are those under the family's `attention_modules`,
    the modules its `set_trainable` opens (SD3: the text tokens' projections, not the whole joint attention);
    counted on the real SD3.5 config too."""
    from diffunlearn.registry import get_family

    case = Case(get_spec(family, tiny=True), "cpu")
    benchmarked = {n for n, _ in set_subset(case.spec, case.network, "cross_attention")}
    suffixes = get_family(family).attention_modules
    family_pick = {n for n, _ in case.network.named_parameters() if any(f".{s}." in f".{n}" for s in suffixes)}
    assert benchmarked == family_pick and benchmarked
    if family == "sd3":
        import diffusers

        with torch.device("meta"):
            real = getattr(diffusers, SPECS["sd3"].network_class)(**SPECS["sd3"].network)
        counted = sum(p.numel() for _, p in set_subset(SPECS["sd3"], real, "cross_attention"))
        assert round(counted / 1e6, 1) == 224.3  # of SD3.5-medium's 2,243M (docs/gpu.md)


def test_masked_update_keeps_masked_elements_under_adam_momentum():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    params = list(net.named_parameters())
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    masked_update(net(torch.randn(8, 4)).pow(2).mean(), params, opt)  # unmasked: builds momentum
    mask = {n: torch.rand(p.shape) < 0.5 for n, p in params}
    before = {n: p.detach().clone() for n, p in params}
    masked_update(-net(torch.randn(8, 4)).pow(2).mean(), params, opt, mask=mask)
    for n, p in params:
        assert torch.equal(p[~mask[n]], before[n][~mask[n]])
        assert not torch.equal(p[mask[n]], before[n][mask[n]])


def test_memory_model_uses_the_floor_and_the_activation_line():
    gib = 2 ** 30
    # floor 18 GiB (optimizer step), activations 0.1 GiB / sample above batch 64
    peaks = {1: 18.0, 4: 18.0, 64: 18.0, 128: 24.4}
    floor, a, s = memory_line(peaks)
    assert floor == 18.0 and s == pytest.approx(0.1) and a == pytest.approx(11.6)
    assert estimate(peaks, 24e9) == int((0.92 * 24e9 / gib - 11.6) / 0.1)
    assert estimate({1: 30.0, 4: 30.5}, 24e9) == 0  # the floor alone is over a 24 GB card
    assert estimate({1: 60.0, 4: 60.0, 14: 60.0}, 80e9) is None  # flat: nothing to extrapolate
    assert card_cell({1: 30.0, 4: 30.5}, 24e9) == "no"
    assert card_cell(peaks, 80e9, largest_ran=128, capped=True).startswith("batch >= 128 (ran), ~")
    assert card_cell({1: 60.0, 4: 60.0, 14: 60.0}, 80e9, largest_ran=14) == "batch 14 (ran)"


def test_tiny_run_of_every_section_on_cpu(tmp_path, capsys):
    """steps, compute, compile, sampling, library and fit on tiny DiT and SD3 layouts: no errors, every section
    has rows, the tables name the device, compile computes the same loss."""
    cli = load_cli()
    out = tmp_path / "bench.json"
    assert cli.main(["--tiny", "--device", "cpu", "--iters", "1", "--models", "dit", "sd3", "--precisions", "bf16",
                     "--json", str(out)]) == 0
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["errors"] == [] and result["skipped"] == []
    rows = result["rows"]
    assert {r["kind"] for r in rows["steps"]} == {"sfr_on", "ft"} and len(rows["steps"]) == 12
    assert all(r["ms"] > 0 for r in rows["steps"])
    cached = [r for r in rows["steps"] if r["cached_latents"]]  # checkpointing off, both kinds, both families
    assert len(cached) == 4 and not any(r["grad_ckpt"] or "vae_encode_ms" in r for r in cached)
    assert [r["pipeline"] for r in rows["sampling"]] == ["DiTPipeline", "StableDiffusion3Pipeline"]
    assert rows["compile"][0]["same_loss_bf16"] and rows["compile"][0]["fp32_rel_diff"] < 1e-4
    assert [r["cached_latents"] for r in rows["library"]] == [False, True]
    assert all(r["mask_cache_hit"] and r["losses_finite"] for r in rows["library"])
    assert {r["subset"] for r in rows["fit"]} == {"all", "cross_attention", "lora"}
    assert "\nDevice: CPU" in text and "| SFR-on / FT |" in text and "| cached latents |" in text


@pytest.mark.parametrize("family", ["dit", "sd3"])
def test_a_cached_latents_step_computes_the_loss_of_the_encoding_step(family):
    """The benchmark's cached-latents rows time the same losses: only the encode moves out of the step."""
    case = Case(get_spec(family, tiny=True), "cpu")
    batch = case.batch(2)
    losses = []
    for latents in (None, case.latents(batch["pixels"])):
        case.gen.manual_seed(0)
        step = batch if latents is None else {**batch, "latents": latents}
        losses.append((case.forget_loss(step).item(), case.task_loss(step).item()))
    assert losses[0] == losses[1]


def test_bad_arguments_are_refused_before_anything_runs(capsys):
    cli = load_cli()
    assert cli.main(["--device", "cpu", "--iters", "1"]) == 2  # full size on a CPU
    assert cli.main(["--tiny", "--device", "cpu", "--batch", "dit=0"]) == 2
    assert cli.main(["--tiny", "--device", "cpu", "--iters", "0"]) == 2
    err = capsys.readouterr().err
    assert "dit=0" in err and "--iters" in err
