"""Config loading: dotted overrides, validation, one-line errors; property-based checks of the loader."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffunlearn.config_loading import build_config, load_config, read_yaml
from diffunlearn.errors import UserError

MAIN = "configs/digits/ddpm_sfron.yaml"


def test_main_config_loads_and_overrides_apply():
    cfg = load_config(MAIN, ["forget.classes=[3,5]", "seed=3", "method.lam=0.25", "train.mixed_precision=bf16"])
    assert cfg.forget.classes == [3, 5] and cfg.seed == 3 and cfg.method.lam == 0.25
    assert cfg.train.mixed_precision == "bf16" and cfg.method.name == "sfr_on"


@pytest.mark.parametrize("override, message", [
    (["method.lambd=0.5"], "unknown config key 'method.lambd'; valid keys here: method.name"),
    (["trian.steps=3"], "unknown config key 'trian'"),
    (["method.name=nope"], "unknown method 'nope'; valid: "),
    (["train.lr=abc"], "bad value for config key 'train.lr'"),
    (["train.lr=-1"], "train.lr must be > 0, got -1"),
    (["train.steps=0"], "train.steps must be > 0, got 0"),
    (["forget.classes=[]"], "forget.classes and forget.prompts are both empty"),
    (["train.optimizer=lbfgs"], "unknown train.optimizer 'lbfgs'; valid: adam, adamw, sgd"),
    (["eval.sampler=heun"], "unknown eval.sampler 'heun'; valid: ddim, ddpm, euler"),
    (["data.generation_guidance=-1"], "data.generation_guidance must be a finite number >= 0 or null, got -1"),
    (["steps"], "bad override 'steps'; expected key=value"),
    (["eval.guidance_scale=nan"], "config key 'eval.guidance_scale' must be a finite number, got nan"),
    (["train.lr=inf"], "config key 'train.lr' must be a finite number, got inf"),
    (["method.alpha=-inf"], "config key 'method.alpha' must be a finite number, got -inf"),
    (["stop.fid_ratio_max=.nan"], "config key 'stop.fid_ratio_max' must be a finite number"),
])
def test_bad_config_values_are_one_line_errors_naming_value_and_choices(override, message):
    with pytest.raises(UserError) as info:
        load_config(MAIN, override)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_every_sfr_on_field_in_the_main_config_is_known():
    raw = read_yaml(MAIN)
    cfg = build_config(raw)
    assert set(raw["method"]) == set(vars(cfg.method)), "config and schema must name the same method keys"


@settings(max_examples=60, deadline=None)
@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
       section=st.sampled_from(["", "method.", "train.", "eval.", "forget.", "model.", "data."]))
def test_unknown_keys_are_always_rejected(key, section):
    cfg = build_config(read_yaml(MAIN))
    node = cfg if not section else getattr(cfg, section[:-1])
    if hasattr(node, key):
        return
    with pytest.raises(UserError, match="unknown config key"):
        build_config(read_yaml(MAIN), [f"{section}{key}=1"])


@settings(max_examples=60, deadline=None)
@given(lr=st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=10),
       steps=st.integers(min_value=-5, max_value=10_000))
def test_numeric_overrides_are_accepted_exactly_when_valid(lr, steps):
    overrides = [f"train.lr={lr!r}", f"train.steps={steps}"]
    if lr > 0 and steps > 0:
        cfg = build_config(read_yaml(MAIN), overrides)
        assert cfg.train.lr == pytest.approx(lr) and cfg.train.steps == steps
    else:
        with pytest.raises(UserError):
            build_config(read_yaml(MAIN), overrides)


# issue 30: every bad config value refused with one line, before anything runs or is written

def _cli_refuses(capsys, tmp_path, argv, message):
    """`diffunlearn unlearn ...` exits 2 with one line holding `message`; no output or partial folder is left."""
    from diffunlearn.commands.cli import main

    out = tmp_path / "x"
    with pytest.raises(SystemExit) as info:
        main(["unlearn", *argv[:1], "--output", str(out), "--no-eval", "train.steps=1", *argv[1:]])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("diffunlearn: error: ") and message in err, err
    assert not out.exists() and not (tmp_path / ".x.partial").exists(), "nothing may be written"
    return err


@pytest.mark.parametrize("override, message", [
    ("seed=-5", "seed must be an integer in 0..4294967295 (2**32 - 1: the seeds numpy accepts), got -5"),
    ("seed=4294967296", "seed must be an integer in 0..4294967295"),
    ("eval.seed=-1", "eval.seed must be an integer in 0..4294967295"),
    ("stop.seed=4294967296", "stop.seed must be an integer in 0..4294967295"),
    ("data.split_seed=-1", "data.split_seed must be an integer in 0..4294967295"),
    ("data.generation_seed=-1", "data.generation_seed must be an integer in 0..4294967295"),
    ("train.steps=100000000000000000000000000", "config key 'train.steps' is out of range"),
    ("data.remain_classes=[-1]", "data.remain_classes must be distinct non-negative class ids, got [-1]"),
])
def test_bad_seeds_and_integers_are_refused_before_anything_is_written(capsys, tmp_path, override, message):
    _cli_refuses(capsys, tmp_path, [MAIN, override], message)


def test_seed_bounds_are_numpys():
    assert load_config(MAIN, ["seed=4294967295", "eval.seed=0"]).seed == 2 ** 32 - 1
    with pytest.raises(UserError, match=r"^seed must be an integer in 0\.\.4294967295"):
        build_config(read_yaml(MAIN), ["seed=-5"])
    from diffunlearn.config import EvalConfig, RunConfig

    with pytest.raises(UserError, match=r"^seed must be an integer"):  # the schema itself, without the loader
        RunConfig(seed=-5)
    with pytest.raises(UserError, match=r"^eval.seed must be an integer"):
        EvalConfig(seed=2 ** 32)


def _alias_bomb(levels: int = 9) -> str:
    names = "abcdefghijklmnop"[:levels]
    lines = ["a: &a [1,1,1,1,1,1,1,1,1]"] + [f"{n}: &{n} [{', '.join(['*' + p] * 9)}]"
                                              for p, n in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_in_one_line_at_once(capsys, tmp_path):
    import time

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb())
    start = time.perf_counter()
    err = _cli_refuses(capsys, tmp_path, [str(bomb)], "expands to more than 100000 values through YAML aliases")
    assert "billion laughs" in err and time.perf_counter() - start < 5, "refused before OmegaConf expands it"


@pytest.mark.parametrize("text, message", [
    ("a: &a [1, *a]\n", "config key 'a[1]' contains itself through a YAML alias"),
    ("seed: 2024-01-01\n", "config key 'seed' has a date value"),
    ("seed: !!binary aGVsbG8=\n", "config key 'seed' has a bytes value"),
    ("eval:\n  prompts: {7: seven}\n", "key 7 under 'eval.prompts' is not a string (int); quote it"),
    ("seed: [" * 40 + "]" * 40 + "\n", "nests deeper than 32 levels"),
    ("seed: 3\n  train: 1\n", "is not valid YAML: mapping values are not allowed here (line 2, column 8)"),
])
def test_yaml_that_omegaconf_cannot_take_is_refused_naming_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        read_yaml(path)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_yaml_aliases_within_the_budget_still_load(tmp_path):
    from pathlib import Path

    text = Path(MAIN).read_text().replace("  seed: 1234\n", "  seed: &seed 1234\n").replace("  seed: 777000",
                                                                                           "  seed: *seed")
    path = tmp_path / "aliases.yaml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.eval.seed == cfg.stop.seed == 1234
    many = tmp_path / "many.yaml"  # 5 levels of 9: 74,733 values once expanded, under the budget
    many.write_text(_alias_bomb(5))
    assert len(read_yaml(many)["e"]) == 9


@pytest.mark.parametrize("config, overrides, message", [
    (MAIN, ["method.name=uce"], "method 'uce' forgets prompts only, on the sd family; for forget.classes on the ddpm "
                                "family use one of: ft, ga, rl, sa, salun, sfr_on"),
    (MAIN, ["method.name=esd"], "method 'esd' forgets prompts only; for forget.classes use one of: ft, ga, rl, sa, "
                                "salun, sfr_on"),
    (MAIN, ["method.name=sa", "forget.classes=[]", "forget.prompts=[a handwritten digit seven]",
            "forget.anchors=[a handwritten digit]"],
     "method 'sa' forgets classes only; for forget.prompts use one of: esd, ga, rl, salun, sfr_on, uce"),
])
def test_a_method_of_the_wrong_kind_is_refused_as_such(capsys, tmp_path, config, overrides, message):
    _cli_refuses(capsys, tmp_path, [config, *overrides], message)


def test_a_method_section_of_its_own_loads(tmp_path):
    import yaml

    raw = read_yaml(MAIN)
    raw["method"] = {"name": "ga"}
    assert build_config(raw).method.name == "ga"
    with pytest.raises(UserError, match="^method 'uce' forgets prompts only, on the sd family"):
        build_config({**raw, "method": {"name": "uce"}})
    path = tmp_path / "uce.yaml"
    path.write_text(yaml.safe_dump({**read_yaml("configs/digits/sd_sfron.yaml"), "method": {"name": "uce"}}))
    assert load_config(path).method.name == "uce"


def test_method_name_override_starts_the_new_method_from_its_own_defaults():
    """`method.name=NEW` on a config written for another method drops that method's keys (as the API's method=);
    later method.* overrides apply on top."""
    assert load_config(MAIN, ["method.name=ga"]).method.name == "ga"
    assert load_config(MAIN, ["method.name=ga", "method.clip=0.5"]).method.clip == 0.5
    assert load_config("configs/digits/sd_sfron.yaml", ["method.name=uce"]).method.name == "uce"
    assert load_config(MAIN, ["method.name=sfr_on"]).method.forget_every == load_config(MAIN).method.forget_every


def test_a_method_section_written_with_another_methods_keys_names_their_owner(tmp_path):
    import yaml

    raw = read_yaml(MAIN)
    raw["method"]["name"] = "ga"  # a YAML whose method section keeps SFR-on's keys
    path = tmp_path / "ga.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"^unknown config key 'method\.\w+' for method 'ga': it belongs to "
                                        "sfr_on; give ga a method section of its own"):
        load_config(path)
