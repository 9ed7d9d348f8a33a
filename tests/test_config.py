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
