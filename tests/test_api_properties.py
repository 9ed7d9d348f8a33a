"""A property-based search of the Python API's arguments: whatever `forget=`, `seed=`, `method=`, `anchor=`,
`remain=` and keyword values a caller passes, `diffunlearn.unlearn` either refuses them with a one-line `UserError`
before anything runs, or they make a valid run config that the run's own checks accept. The checks are the ones
`unlearn` runs before the run starts (settings, one validation, method vs target, target vs model); examples that
pass them are run end to end on a tiny model a few times (the last test)."""

import numpy as np
import pytest
import torch
from conftest import tiny_ddpm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_api import FAST

import diffunlearn
from diffunlearn.api_settings import apply_settings, starting_config
from diffunlearn.config_loading import build_config
from diffunlearn.data.sets import check_target
from diffunlearn.errors import UserError
from diffunlearn.registry import check_method
from diffunlearn.registry import METHODS, get_method

SCALARS = st.one_of(st.integers(-20, 20), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True),
                    st.text(max_size=6), st.booleans(), st.none(), st.builds(np.int64, st.integers(-3, 12)),
                    st.builds(torch.tensor, st.integers(-3, 12)))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=3), SCALARS, max_size=2))
CALLS = st.fixed_dictionaries({"forget": VALUES, "seed": VALUES, "anchor": st.one_of(st.none(), VALUES),
                               "remain": st.one_of(st.none(), VALUES),
                               "method": st.one_of(st.none(), st.sampled_from(sorted(METHODS.load_all()) + ["nope"])),
                               "keywords": st.dictionaries(st.sampled_from(["steps", "lr", "batch_size", "subset",
                                                                            "judge", "stepz"]), VALUES, max_size=2)})
MODEL = tiny_ddpm()


def checked(call: dict):
    """What `unlearn` does with the arguments before the run starts; returns the validated config."""
    raw = starting_config(MODEL.pipeline, "ddpm")
    apply_settings(raw, MODEL.pipeline, "ddpm", call["forget"], call["anchor"], call["remain"], call["method"],
                   call["seed"], None, dict(call["keywords"]))
    raw["model"]["path"] = "memory"
    cfg = build_config(raw)
    check_method(cfg, get_method(cfg.method.name))
    check_target(cfg, MODEL)
    return cfg


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(CALLS)
def test_any_api_arguments_give_a_valid_config_or_a_one_line_user_error(call):
    try:
        cfg = checked(call)
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        return
    assert cfg.forget.classes and all(0 <= c < MODEL.num_classes for c in cfg.forget.classes)
    assert 0 <= cfg.seed < 2 ** 32


@pytest.mark.parametrize("forget, seed", [(3, 5), ([np.int16(2), 9], 0), (torch.tensor(4), 2 ** 32 - 1)])
def test_arguments_the_checks_accept_run(forget, seed):
    result = diffunlearn.unlearn(MODEL.pipeline, forget=forget, seed=seed, steps=1, evaluate=False, progress=False,
                                 overrides=FAST)
    ids = [int(c) for c in (forget if isinstance(forget, list) else [forget])]
    assert result.report["forget_classes"] == ids and result.report["config"]["seed"] == seed
