"""Property-based checks of config loading: whatever value a key of the shipped DDPM config is given (in the YAML
file, as a mapping, or as a `key=value` override), loading returns a config or refuses it with a one-line
`UserError` naming the key; never another exception.

Deterministic (derandomize) and fast (no model is loaded; build_config takes ~20 ms). For a deeper search, raise
the example count: CONFIG_PROPERTY_EXAMPLES=5000 pytest tests/test_config_properties.py.
"""

import copy
import json
import math
import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffunlearn.config import RunConfig
from diffunlearn.config_loading import build_config, load_config, read_yaml
from diffunlearn.errors import UserError

MAIN = "configs/digits/ddpm_sfron.yaml"
RAW = read_yaml(MAIN)
EXAMPLES = int(os.environ.get("CONFIG_PROPERTY_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _leaves(mapping: dict, prefix: str = "") -> list:
    out = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


# every key of the shipped config, and the keys it leaves at their defaults that take lists / mappings / null
KEYS = sorted(set(_leaves(RAW)) | {
    "forget.prompts", "forget.anchors", "forget.remain_prompts", "forget.concept", "data.remain_classes",
    "data.samples_per_target", "data.generation_seed", "data.generation_guidance", "eval.prompts", "eval.labels",
    "eval.judge", "eval.attacks", "eval.nudenet_threshold", "eval.nudenet_classes", "eval.fid_reference",
    "eval.inception_weights", "eval.rt", "model.subset", "model.lora_rank", "model.source", "train.compile",
    "method.relearn_steps", "method.relearn_lr", "method.relearn_batch", "method.relearn_weight",
    "method.condition_attack_steps", "method.condition_attack_lr", "method.condition_attack_radius",
    "method.condition_attack_weight"})
SECTIONS = sorted(k for k, v in RAW.items() if isinstance(v, dict))

EXTREME_INTS = [0, 1, -1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63, -(2 ** 63) - 1, 10 ** 30,
                -(10 ** 30)]
scalars = st.one_of(
    st.integers(), st.sampled_from(EXTREME_INTS),
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e-320, 1e308]),
    st.text(max_size=12), st.sampled_from(["", " ", "7", "-5", "nan", "${seed}", "${oops", "sfr_on", "uce"]),
    st.booleans(), st.none())
METHODS = ["sfr_on", "salun", "rl", "ga", "ft", "sa", "esd", "uce"]
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.sampled_from(METHODS),
                   st.dictionaries(st.one_of(st.text(max_size=6), st.integers(), st.booleans(), st.none()), scalars,
                                   max_size=3),
                   st.lists(st.one_of(st.lists(scalars, max_size=2), st.dictionaries(st.text(max_size=3), scalars,
                                                                                     max_size=2)), max_size=2))
# override values are text that OmegaConf's grammar parses (brackets, quotes, interpolations, YAML scalars)
override_text = st.one_of(
    st.text(alphabet=st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=16),
    st.sampled_from(["[]", "[7]", "[-1]", "[1,1]", "[[1]]", "{}", "{a: 1}", "null", "~", "true", "1e999", "-1e999",
                     ".nan", "nan", "inf", "0x10", "1_000", "4294967296", "-5", "9" * 30, "'7'", "${seed}",
                     "${oc.env:HOME}", "${oops", "[a, ${b}]", "2024-01-01", "\\", "'", "[", "{", *METHODS]),
    values.map(json.dumps))
# text of a YAML value: dates, tags, aliases, YAML 1.1 booleans and numbers
yaml_text = st.one_of(
    st.sampled_from(["2024-01-01", "2024-01-01 10:00:00", "!!binary aGVsbG8=", "!!set {a, b}", "!!omap [{a: 1}]",
                     "!!python/object/apply:os.getcwd []", "*nope", "&x [1, *x]", "yes", "off", "~", ".inf", "-.inf",
                     ".NaN", "0o17", "0x1F", "1_000", "1:30", "'7'", "\"\\x00\"", "[1, [2, [3]]]", "{? [1]: a}",
                     "{1: a}", "{null: a}", "!!int 3", "!!float 3", "!!str 3", "!!null ''", "|\n    block"]),
    override_text, values.map(json.dumps))


def _assigned(raw: dict, key: str, value) -> dict:
    raw = copy.deepcopy(raw)
    *path, last = key.split(".")
    node = raw
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value
    return raw


def _outcome(load, keys: list, syntax: str = None):
    """Run a loader; a config, or a UserError of one line that names one of `keys` (or, for YAML that does not
    parse, `syntax` and the line), are the only outcomes."""
    try:
        cfg = load()
    except UserError as exc:
        message = str(exc)
        assert message and "\n" not in message, f"not one line: {message!r}"
        named = [k for k in keys if k in message or (k == "method.name" and "method" in message)]
        parse_error = syntax is not None and message.startswith(syntax) and "(line " in message
        assert named or parse_error, f"the message names none of {keys}: {message!r}"
        return exc
    assert isinstance(cfg, RunConfig)
    return cfg


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=3, unique_by=lambda kv: kv[0]))
def test_any_value_in_a_config_mapping_loads_or_is_refused_in_one_line(items):
    raw = RAW
    for key, value in items:
        raw = _assigned(raw, key, value)
    _outcome(lambda: build_config(raw), [k for k, _ in items])


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(KEYS + SECTIONS + ["method"]), override_text), min_size=1, max_size=3))
def test_any_override_loads_or_is_refused_in_one_line(items):
    _outcome(lambda: build_config(RAW, [f"{k}={v}" for k, v in items]), [k for k, _ in items])


@pytest.fixture(scope="module")
def yaml_file(tmp_path_factory):
    return tmp_path_factory.mktemp("yaml") / "config.yaml"


def _yaml_with(key: str, text: str) -> str:
    """The shipped config as YAML text, with `key` written last in its section as the YAML value `text`."""
    *path, last = key.split(".")
    raw = copy.deepcopy(RAW)
    if not path:
        raw.pop(last, None)
        return yaml.safe_dump(raw, sort_keys=False) + f"{last}: {text}\n"
    section = raw.pop(path[0], None) or {}
    section.pop(last, None)
    body = yaml.safe_dump(raw, sort_keys=False) + f"{path[0]}:\n"
    body += "".join(f"  {line}\n" for line in yaml.safe_dump(section, sort_keys=False).splitlines() if section)
    text = "\n".join(("    " if i else "") + line for i, line in enumerate(text.splitlines() or [""]))
    return body + f"  {last}: {text}\n"


@SETTINGS
@given(key=st.sampled_from(KEYS), text=yaml_text)
def test_any_value_in_a_yaml_file_loads_or_is_refused_in_one_line(yaml_file, key, text):
    yaml_file.write_text(_yaml_with(key, text))
    _outcome(lambda: load_config(yaml_file), [key], syntax=f"config file {str(yaml_file)!r} is not valid YAML: ")


@pytest.mark.parametrize("key, text, expected", [
    ("train.steps", "300", 300), ("seed", "0", 0), ("forget.classes", "[3, 5]", [3, 5]),
    ("eval.prompts", "{a digit: seven}", {"a digit": "seven"}), ("method.lam", "0.25", 0.25)])
def test_the_yaml_property_writes_the_value_where_it_belongs(yaml_file, key, text, expected):
    yaml_file.write_text(_yaml_with(key, text))
    node = load_config(yaml_file)
    for part in key.split("."):
        node = getattr(node, part)
    assert node == expected
