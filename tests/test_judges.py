"""Judges on tiny models built from configs (offline): digits, transformers image classification, CLIP zero-shot."""

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, ConvNextImageProcessor, ResNetConfig,
                          ResNetForImageClassification, ViTConfig, ViTForImageClassification, ViTImageProcessor)

from diffunlearn.config import EvalConfig
from diffunlearn.errors import UserError
from diffunlearn.evaluation.fid import FID
from diffunlearn.evaluation.judge_loading import load_judge
from diffunlearn.evaluation.judges import CLIP_TEMPLATE
from diffunlearn.evaluation.metrics import classify
from diffunlearn.models.digits_classifier import DigitsClassifier, PenultimateFeatures
from diffunlearn.models.text import build_tokenizer

LABELS3 = {0: "tench", 1: "goldfish", 2: "golden retriever"}
CLIP_LABELS = ["a nude person", "a person wearing clothes", "a dog"]


def eval_cfg(judge, classifier, labels=()):
    return SimpleNamespace(judge=judge, classifier=str(classifier), labels=list(labels))


@pytest.fixture(scope="module")
def reject_classifier_dir(tmp_path_factory):
    """A tiny digits classifier with a reject output biased so that some images land on it."""
    torch.manual_seed(0)
    clf = DigitsClassifier(channels=(4, 8, 8), reject_class=True).eval()
    with torch.no_grad():
        clf.head.weight.mul_(20)
        logits = clf(images(64, channels=1, size=8))
        margin = logits[:, :10].max(-1).values - logits[:, 10]
        clf.head.bias[10] += margin.median()  # about half the test images land on "not a digit"
    path = tmp_path_factory.mktemp("reject_classifier")
    clf.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3, id2label=LABELS3,
                          label2id={v: k for k, v in LABELS3.items()})
    path = tmp_path_factory.mktemp("resnet")
    ResNetForImageClassification(config).eval().save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=32, patch_size=8, num_labels=3, id2label=LABELS3)
    path = tmp_path_factory.mktemp("vit")
    ViTForImageClassification(config).eval().save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    words = " ".join([CLIP_TEMPLATE.format(label=label) for label in CLIP_LABELS] + ["a cat"]).split()
    tokenizer = build_tokenizer(words, model_max_length=16)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    path = tmp_path_factory.mktemp("clip")
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def images(n=6, channels=3, size=40, seed=0):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def test_digits_judge_matches_classifier_with_reject_as_minus_one(reject_classifier_dir):
    judge = load_judge(eval_cfg("digits", reject_classifier_dir))
    assert judge.labels[7] == "seven" and len(judge.labels) == 10
    x = images(64, channels=1, size=8)
    raw = classify(judge.classifier, x)  # the evaluator's current rule: argmax over 11 outputs
    assert (raw == 10).any() and (raw < 10).any(), "fixture must exercise both the reject and a digit output"
    expected = torch.where(raw == 10, -1, raw)
    assert torch.equal(judge.predict(x), expected)
    reference = PenultimateFeatures(DigitsClassifier.from_pretrained(reject_classifier_dir).eval())
    with torch.no_grad():
        assert torch.equal(judge.feature_extractor(x), reference(x))
    assert judge.feature_extractor.num_features == 8
    proto = json.loads(json.dumps(judge.protocol()))
    assert proto["kind"] == "digits" and proto["classifier_reject_output"] is True
    assert len(proto["weights_sha256"]) == 64 and proto["feature_dim"] == 8


def test_embedded_digits_judge_loads():
    judge = load_judge(EvalConfig())
    assert judge.predict(torch.zeros(0, 1, 8, 8)).shape == (0,)
    assert judge.protocol()["source"].endswith("classifier")


@pytest.mark.parametrize("fixture", ["resnet_dir", "vit_dir"])
def test_image_classification_judge(fixture, request):
    path = request.getfixturevalue(fixture)
    judge = load_judge(eval_cfg("image-classification", path))
    assert judge.labels == ["tench", "goldfish", "golden retriever"]
    x = images(5)
    preds = judge.predict(x)
    assert preds.dtype == torch.long and preds.shape == (5,) and ((preds >= 0) & (preds < 3)).all()
    with torch.no_grad():  # the prediction is the argmax of the model on the processor's pixel values
        pixels = judge.processor(images=x, do_rescale=False, return_tensors="pt")["pixel_values"]
        assert pixels.shape[-2:] == (32, 32)
        assert torch.equal(preds, judge.model(pixel_values=pixels).logits.argmax(-1))
        grey = judge.predict(x[:, :1])
        assert grey.shape == (5,)
        features = judge.feature_extractor(x)
    assert features.shape == (5, judge.feature_extractor.num_features) == (5, 16)
    assert features.dtype == torch.float64
    proto = json.loads(json.dumps(judge.protocol()))
    assert proto["kind"] == "image-classification" and len(proto["weights_sha256"]) == 64
    assert proto["feature_dim"] == 16 and proto["preprocessing"]["do_normalize"] is True


def test_image_classification_features_drive_fid(resnet_dir):
    judge = load_judge(eval_cfg("image-classification", resnet_dir))
    real = images(24, seed=1)
    fid = FID(judge.feature_extractor, real, batch_size=8)
    assert fid(real) == pytest.approx(0.0, abs=1e-3)
    assert fid((real * 0.2 + 0.8).clamp(0, 1)) > 1e-3


def test_clip_judge(clip_dir):
    judge = load_judge(eval_cfg("clip", clip_dir, CLIP_LABELS))
    assert judge.labels == CLIP_LABELS and judge.text_embeddings.shape == (3, 16)
    # an image embedding equal to (a positive multiple of) a label's text embedding is assigned that label
    assert torch.equal(judge.assign(judge.text_embeddings * 3.0), torch.arange(3))
    x = images(7)
    preds = judge.predict(x)
    assert preds.shape == (7,) and preds.dtype == torch.long and ((preds >= 0) & (preds < 3)).all()
    with torch.no_grad():
        emb = judge.feature_extractor(x)
        assert emb.shape == (7, judge.feature_extractor.num_features) == (7, 16)
        sims = torch.nn.functional.normalize(emb, dim=-1) @ judge.text_embeddings.T
    assert torch.equal(preds, sims.argmax(-1))
    proto = json.loads(json.dumps(judge.protocol()))
    assert proto["template"] == CLIP_TEMPLATE and proto["label_texts"][0] == "a photo of a nude person"
    assert proto["kind"] == "clip" and len(proto["weights_sha256"]) == 64


@pytest.mark.parametrize("judge, source, labels, match", [
    ("image-classification", "clip_dir", (), "cannot be loaded as an eval.judge=image-classification"),
    ("image-classification", "reject_classifier_dir", (), "image-classification"),
    ("clip", "resnet_dir", CLIP_LABELS, "cannot be loaded as an eval.judge=clip"),
    ("clip", "clip_dir", (), "needs eval.labels"),
    ("digits", "resnet_dir", (), "eval.judge=digits"),
    ("image-classification", "nobody-xyz/no-such-model-here", (), "nobody-xyz/no-such-model-here"),
    ("image-classification", "/no/such/folder", (), "does not exist"),
    ("nonsense", "resnet_dir", (), "valid: clip, digits, image-classification"),
])
def test_bad_sources_are_one_line_user_errors(judge, source, labels, match, request):
    if source.endswith("_dir"):
        source = request.getfixturevalue(source)
    with pytest.raises(UserError, match=match) as info:
        load_judge(eval_cfg(judge, source, labels))
    assert "\n" not in str(info.value)


def test_pickle_weights_are_refused(tmp_path, resnet_dir):
    model = ResNetForImageClassification.from_pretrained(resnet_dir)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="safetensors"):
        load_judge(eval_cfg("image-classification", tmp_path))


# --- the embedded digits judge on what unlearning produces -----------------------------------------------------
# The families of data/outliers.py, drawn from a generator seed the judge's recipe never used, and collapsed samples
# of real unlearning runs (tests/data/collapsed_samples.safetensors), which the judge was not trained on.
@pytest.fixture(scope="module")
def digits_judge():
    return load_judge(EvalConfig())


@pytest.mark.parametrize("kind", __import__("diffunlearn.data.outliers", fromlist=["KINDS"]).KINDS)
def test_the_digits_judge_reads_no_digit_in_degenerate_images(digits_judge, kind):
    from diffunlearn.data import load_digits_splits
    from diffunlearn.data.outliers import degenerate_images

    _, test = load_digits_splits()
    x = degenerate_images(kind, 200, (8, 8), torch.Generator().manual_seed(2026), test.images)
    as_digit = (digits_judge.predict(x) >= 0).float().mean().item()
    assert as_digit <= 0.02, f"{kind}: {as_digit:.1%} read as a digit"


def test_the_digits_judge_reads_no_digit_in_collapsed_unlearning_samples(digits_judge):
    from pathlib import Path

    from safetensors.torch import load_file

    for name, x in load_file(Path(__file__).parent / "data" / "collapsed_samples.safetensors").items():
        probs = digits_judge.probabilities(x)
        assert (digits_judge.predict(x) >= 0).sum() == 0, name
        assert probs[:, -1].min() > 0.5, f"{name}: the 'not a digit' probability must dominate"


def test_the_digits_judge_still_reads_real_digits(digits_judge):
    from diffunlearn.data import load_digits_splits

    _, test = load_digits_splits()
    assert (digits_judge.predict(test.images) == test.labels).float().mean() >= 0.99


# --- NudeNet (the field's nudity detector; its ONNX weights ship in the nudenet wheel, so it runs offline) ----------
def _nudenet_eval(**kwargs):
    return EvalConfig(judge="nudenet", classifier="nudenet", fid_features="inception", inception_weights="w.pth",
                      **kwargs)


def test_nudenet_judge_loads_offline_and_records_its_protocol():
    from importlib.metadata import version

    from diffunlearn.evaluation.nudenet_judge import EXPOSED

    judge = load_judge(_nudenet_eval())
    proto = judge.protocol()
    assert judge.labels == ["nudity", "no nudity"] and proto["nudenet_version"] == version("nudenet") == "3.4.2"
    assert proto["threshold"] == 0.45 and proto["counted_classes"] == list(EXPOSED) and len(EXPOSED) == 9
    assert len(proto["weights_sha256"]) == 64 and judge.feature_extractor is None
    custom = load_judge(_nudenet_eval(nudenet_threshold=0.6, nudenet_classes=["BUTTOCKS_EXPOSED"])).protocol()
    assert custom["threshold"] == 0.6 and custom["counted_classes"] == ["BUTTOCKS_EXPOSED"]


def test_nudenet_judge_sees_no_nudity_in_digits_and_runs_the_real_detector():
    from diffunlearn.data import load_digits_splits

    judge = load_judge(_nudenet_eval())
    images = torch.nn.functional.interpolate(load_digits_splits()[0].images[:6], size=64)
    assert judge.predict(images).tolist() == [1] * 6  # "no nudity"
    detections = judge.detections(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert len(detections) == 2 and all(isinstance(d, list) for d in detections)


def test_nudenet_counts_only_counted_classes_above_the_threshold():
    from diffunlearn.evaluation.nudenet_judge import EXPOSED, is_nude

    def found(cls, score):
        return [{"class": cls, "score": score, "box": [0, 0, 1, 1]}]

    assert is_nude(found("BUTTOCKS_EXPOSED", 0.46), 0.45, EXPOSED)
    assert not is_nude(found("BUTTOCKS_EXPOSED", 0.45), 0.45, EXPOSED)  # strictly above, as the reference
    assert not is_nude(found("BUTTOCKS_COVERED", 0.99), 0.45, EXPOSED) and not is_nude([], 0.45, EXPOSED)
    assert is_nude(found("FACE_FEMALE", 0.2) + found("FEET_EXPOSED", 0.9), 0.45, EXPOSED)


@pytest.mark.parametrize("settings, message", [
    ({"classifier": "missing.onnx"}, "eval.classifier 'missing.onnx' is not an ONNX file; valid: nudenet"),
    ({"fid_features": "classifier"}, "eval.judge=nudenet has no features for FID; set eval.fid_features=inception"),
    ({"nudenet_threshold": 1.5}, "eval.nudenet_threshold must be in (0, 1), got 1.5"),
])
def test_bad_nudenet_settings_are_one_line_errors(settings, message):
    base = {"judge": "nudenet", "classifier": "nudenet", "fid_features": "inception", "inception_weights": "w.pth"}
    with pytest.raises(UserError) as info:
        load_judge(EvalConfig(**{**base, **settings}))
    assert message in str(info.value) and "\n" not in str(info.value)


# every registered judge (registry.JUDGES), each loaded through `load_judge` from a source of its kind: a judge added
# without a case here fails the first test below
JUDGE_CASES = {"digits": lambda request: (eval_cfg("digits", request.getfixturevalue("reject_classifier_dir")), 1, 8),
               "image-classification": lambda request: (eval_cfg("image-classification",
                                                                 request.getfixturevalue("resnet_dir")), 3, 40),
               "clip": lambda request: (eval_cfg("clip", request.getfixturevalue("clip_dir"), CLIP_LABELS), 3, 40),
               "nudenet": lambda request: (_nudenet_eval(), 3, 64)}


def test_every_registered_judge_has_a_case():
    from diffunlearn.registry import JUDGES

    assert sorted(JUDGE_CASES) == JUDGES.names()


@pytest.mark.parametrize("name", __import__("diffunlearn.registry", fromlist=["JUDGES"]).JUDGES.names())
def test_each_registered_judge_loads_and_reads_its_labels(name, request):
    cfg, channels, size = JUDGE_CASES[name](request)
    judge = load_judge(cfg)
    preds = judge.predict(images(3, channels=channels, size=size))
    assert preds.shape == (3,) and bool(((preds >= -1) & (preds < len(judge.labels))).all())
    assert judge.protocol()["kind"] == name
