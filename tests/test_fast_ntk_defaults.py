"""Issue 30: Fast-NTK's defaults forget. The CLI as documented (`diffunlearn fast-ntk --forget-classes C --output
DIR`, on both embedded digits classifiers) and the README call (`diffunlearn.fast_ntk_unlearn(classifier,
forget_set, retain_set, subset="head")`) drive forget accuracy to ~0 and keep test accuracy (the retained classes'
test images, the benchmark's protocol) within 2 points; init="current" / None still linearises at the trained
weights; a bad init is a one-line UserError."""

import json

import pytest
import torch

import diffunlearn
from diffunlearn.assets import resolve_model_path
from diffunlearn.commands.cli import main
from diffunlearn.data import load_digits_splits
from diffunlearn.errors import UserError
from diffunlearn.evaluation.classification import accuracy
from diffunlearn.models.digits_classifier import DigitsClassifier
from diffunlearn.ntk.subset import resolve_init, select_subset
from diffunlearn.ntk.unlearn import fast_ntk_scrub

MODELS = ("embedded:digits/classifier", "embedded:digits/classifier_plain")
CLASSES = (3, 0)  # not only 7, the class of the README's examples


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits()


@pytest.fixture(scope="module")
def classifiers():
    return {name: DigitsClassifier.from_pretrained(resolve_model_path(name)).eval() for name in MODELS}


@pytest.mark.parametrize("forget_class", CLASSES)
@pytest.mark.parametrize("model", MODELS)
def test_the_documented_cli_with_default_options_forgets_the_class(tmp_path, model, forget_class):
    out = tmp_path / f"ntk_{forget_class}"
    argv = ["fast-ntk", "--forget-classes", str(forget_class), "--output", str(out)]
    main(argv if model == MODELS[0] else argv + ["--model", model])  # the default model is the first
    saved = json.loads((out / "fast_ntk.json").read_text())
    original, unlearned = saved["metrics"]["original"], saved["metrics"]["unlearned"]
    assert saved["forget_classes"] == [forget_class] and saved["model"] == model
    assert saved["init"] == saved["info"]["init"] == "zeros" and saved["info"]["subset"] == "head"
    assert original["FA"] == 1.0 and unlearned["FA"] <= 0.05, (original, unlearned)
    assert abs(unlearned["TA"] - original["TA"]) <= 0.02, (original, unlearned)
    assert DigitsClassifier.from_pretrained(out).config.num_classes == 10


@pytest.mark.parametrize("forget_class", CLASSES)
@pytest.mark.parametrize("model", MODELS)
def test_the_readme_call_with_defaults_forgets_the_class(digits, classifiers, model, forget_class):
    train, test = digits
    classifier = classifiers[model]
    forget_set, retain_set = train.forget_remain([forget_class])
    scrubbed = diffunlearn.fast_ntk_unlearn(classifier, forget_set, retain_set, subset="head")
    kept = test.select_classes([forget_class], keep=False)
    assert accuracy(forget_set.images, forget_set.labels, classifier) == 1.0
    assert accuracy(forget_set.images, forget_set.labels, scrubbed) <= 0.05
    ta = [accuracy(kept.images, kept.labels, m) for m in (classifier, scrubbed)]
    assert abs(ta[1] - ta[0]) <= 0.02, ta
    detailed = fast_ntk_scrub(classifier, forget_set, retain_set, subset="head")
    assert detailed.info["init"] == "zeros" and detailed.info["curvature"] == "uniform"
    assert torch.equal(detailed.model.head.weight, scrubbed.head.weight)


def test_current_weights_stay_available_and_do_not_forget(tmp_path, digits, classifiers):
    """init=None and init="current" (CLI: --init current) are the old default: the linearisation at the trained
    head, which leaves it classifying D_f."""
    train, _ = digits
    classifier = classifiers[MODELS[0]]
    forget_set, retain_set = train.forget_remain([3])
    results = [fast_ntk_scrub(classifier, forget_set, retain_set, init=init) for init in (None, "current")]
    assert [r.info["init"] for r in results] == ["current", "current"]
    assert torch.equal(results[0].model.head.weight, results[1].model.head.weight)
    assert accuracy(forget_set.images, forget_set.labels, results[0].model) == 1.0
    out = tmp_path / "current"
    main(["fast-ntk", "--forget-classes", "3", "--init", "current", "--output", str(out)])
    saved = json.loads((out / "fast_ntk.json").read_text())
    assert saved["init"] == saved["info"]["init"] == "current" and saved["metrics"]["unlearned"]["FA"] == 1.0


def test_zeros_puts_the_head_at_zero_and_keeps_other_subset_weights(classifiers):
    """As the benchmark's `init: zeros`: the head at 0, BN weights as trained; a subset without the head keeps its
    current weights (None), recorded as 'current'."""
    model = classifiers[MODELS[1]]
    params = dict(model.named_parameters())
    both = select_subset(model, "bn+head")
    w0 = resolve_init("zeros", model, both)
    assert list(w0) == both.names and {"head.weight", "head.bias"} <= set(w0)
    for name, value in w0.items():
        expected = torch.zeros_like(params[name]) if name.startswith("head.") else params[name]
        assert torch.equal(value, expected), name
    assert resolve_init("zeros", model, select_subset(model, "bn")) is None


def test_a_bad_init_is_a_one_line_user_error(tmp_path, digits, capsys):
    train, _ = digits
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    forget, retain = (train.images[:4], train.labels[:4]), (train.images[4:40], train.labels[4:40])
    valid = "valid: 'zeros' (the default), 'current' or None (the current weights), or a dict name->tensor"
    for bad, message in (("ones", f"unknown init 'ones'; {valid}"), ("", f"unknown init ''; {valid}"),
                         (0, f"init of type int is not supported; {valid}"),
                         (["zeros"], f"init of type list is not supported; {valid}"),
                         ({"1.weight": "abc", "1.bias": torch.zeros(10)},
                          "init['1.weight'] of type str is not a tensor; give a tensor of shape (10, 64)")):
        with pytest.raises(UserError) as info:
            diffunlearn.fast_ntk_unlearn(model, forget, retain, init=bad)
        assert str(info.value) == message
    out = tmp_path / "bad"
    with pytest.raises(SystemExit) as exit_info:
        main(["fast-ntk", "--forget-classes", "3", "--init", "ones", "--output", str(out)])
    assert exit_info.value.code == 2 and not out.exists()
    assert capsys.readouterr().err.strip() == "diffunlearn: error: unknown --init 'ones'; valid: current, zeros"
