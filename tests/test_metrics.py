"""Evaluation metrics: FID invariants, per-class accuracy with a rigged classifier, sampling seeds, the Inception FID
from a local pytorch-fid weights file."""

import pytest
import torch
from conftest import tiny_ddpm

from diffunlearn.assets import resolve_model_path
from diffunlearn.config import EvalConfig
from diffunlearn.data import load_digits_splits
from diffunlearn.data.generated import generate, labels_and_seeds
from diffunlearn.evaluation.fid import FID
from diffunlearn.evaluation.metrics import classify, per_class_accuracy
from diffunlearn.models.digits_classifier import DigitsClassifier, PenultimateFeatures


class RiggedClassifier(torch.nn.Module):
    """Predicts a fixed class per image, read from the image's top-left pixel (value * 10)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return torch.nn.functional.one_hot((images[:, 0, 0, 0] * 10).round().long(), 10).float()


def _images_predicted_as(classes):
    images = torch.zeros(len(classes), 1, 8, 8)
    images[:, 0, 0, 0] = torch.tensor(classes, dtype=torch.float) / 10
    return images


def test_per_class_accuracy_with_a_rigged_classifier():
    labels = torch.tensor([7, 7, 7, 7, 1, 1, 2, 2])
    preds = classify(RiggedClassifier(), _images_predicted_as([7, 3, 7, 0, 1, 1, 2, 5]))
    assert preds.tolist() == [7, 3, 7, 0, 1, 1, 2, 5]
    assert per_class_accuracy(preds, labels) == {1: 1.0, 2: 0.5, 7: 0.5}


def _extractor():
    return PenultimateFeatures(DigitsClassifier.from_pretrained(resolve_model_path("embedded:digits/classifier")))


def test_fid_of_a_set_with_itself_is_about_zero_and_a_shift_raises_it():
    train, _ = load_digits_splits()
    real = train.images[:600]
    fid = FID(_extractor(), real)
    assert abs(fid(real)) < 1e-3
    shifted = fid((real + 0.3).clamp(0, 1))
    assert shifted > 1.0
    assert fid((real + 0.6).clamp(0, 1)) > shifted
    assert abs(fid(real)) < 1e-3, "real statistics must survive resets between fake sets"


def test_sampling_uses_per_image_seeds_independent_of_batch_size():
    model = tiny_ddpm()
    labels, seeds = labels_and_seeds([3, 5], 3, eval_seed=11)
    assert seeds[:3] == [300011, 300012, 300013] and seeds[3:] == [500011, 500012, 500013]
    cfg = EvalConfig(num_inference_steps=2, batch_size=6)
    whole = generate(model, labels, seeds, cfg)
    cfg.batch_size = 2
    torch.testing.assert_close(generate(model, labels, seeds, cfg), whole)
    assert whole.shape == (6, 1, 8, 8) and 0 <= whole.min() and whole.max() <= 1


def test_inception_fid_needs_a_local_weights_file(tmp_path):
    from diffunlearn.config_loading import load_config
    from diffunlearn.errors import UserError
    from diffunlearn.evaluation.fid import inception_extractor

    with pytest.raises(UserError, match="needs eval.inception_weights"):
        load_config("configs/digits/ddpm_sfron.yaml", ["eval.fid_features=inception"])
    with pytest.raises(UserError, match="is not a file"):
        inception_extractor(str(tmp_path / "missing.pth"))


def _fid_inception_with_random_weights():
    """pytorch-fid's FID Inception v3 (the network whose weights are pt_inception-2015-12-05-6726825d.pth) with
    random weights, built offline as `pytorch_fid.inception.fid_inception_v3` builds it, minus the download."""
    from pytorch_fid import inception as pf

    torch.manual_seed(0)
    net = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    blocks = {"Mixed_5b": pf.FIDInceptionA(192, pool_features=32), "Mixed_5c": pf.FIDInceptionA(256, pool_features=64),
              "Mixed_5d": pf.FIDInceptionA(288, pool_features=64), "Mixed_6b": pf.FIDInceptionC(768, channels_7x7=128),
              "Mixed_6c": pf.FIDInceptionC(768, channels_7x7=160), "Mixed_6d": pf.FIDInceptionC(768, channels_7x7=160),
              "Mixed_6e": pf.FIDInceptionC(768, channels_7x7=192), "Mixed_7b": pf.FIDInceptionE_1(1280),
              "Mixed_7c": pf.FIDInceptionE_2(2048)}
    for name, block in blocks.items():
        setattr(net, name, block)
    for module in net.modules():  # batch-norm statistics of real activations, else the features vanish (~1e-8)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the calibration batch
    with torch.no_grad():
        net.train()(torch.rand(4, 3, 299, 299) * 2 - 1)
    return net.eval()


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    net = _fid_inception_with_random_weights()
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return net, str(path)


def test_inception_features_from_a_local_pytorch_fid_weights_file_match_pytorch_fid(inception_weights):
    from unittest import mock

    from pytorch_fid import inception as pf

    from diffunlearn.evaluation.fid import inception_extractor

    net, path = inception_weights
    ours = inception_extractor(path)
    with mock.patch.object(pf, "fid_inception_v3", lambda: net):  # pytorch-fid's own pipeline on these weights
        reference = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    images = (torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).floor() / 255
    with torch.no_grad():
        got, want = ours(images), reference(images)[0].flatten(1).double()
    assert got.shape == (3, 2048)
    # the networks and weights are the same; the resize to 299 differs (TF1-style bilinear vs F.interpolate):
    # measured 0.14% relative, cosine 0.999999
    assert ((got - want).norm() / want.norm()).item() < 0.02
    assert torch.nn.functional.cosine_similarity(got, want).min().item() > 0.9999


def test_an_evaluation_with_inception_fid_records_it_in_the_protocol(inception_weights, tiny_ddpm_dir,
                                                                    tiny_classifier_dir):
    from conftest import tiny_overrides

    from diffunlearn.config_loading import load_config
    from diffunlearn.evaluation.evaluator import make_evaluator
    from diffunlearn.evaluation.judge_loading import load_judge

    cfg = load_config("configs/digits/ddpm_sfron.yaml", tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir) + [
        "eval.fid_features=inception", f"eval.inception_weights={inception_weights[1]}", "eval.fid_reference=base",
        "data.remain_classes=[3,4]", "eval.retained_samples_per_class=3", "eval.forget_samples=2"])
    model = tiny_ddpm()
    evaluator = make_evaluator(cfg, model, load_judge(cfg.eval), model, tiny_ddpm_dir)
    metrics, _ = evaluator(model)
    assert metrics["fid_retained"] > 1  # 6 tiny-model samples against 6 others: far apart in 2048 dimensions
    protocol = evaluator.protocol
    assert (protocol["fid_features"], protocol["feature_dim"], protocol["fid_real_images"]) == \
        ("inception-v3-2048", 2048, 6)


def test_inception_weights_are_read_safely_and_bad_files_are_one_line_errors(inception_weights, tmp_path):
    from safetensors.torch import save_file

    from diffunlearn.errors import UserError
    from diffunlearn.evaluation.fid import inception_extractor

    net, path = inception_weights
    copy = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(copy))
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(inception_extractor(str(copy))(images), inception_extractor(path)(images))

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    hostile = tmp_path / "pt_inception-hostile.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": Payload()}, hostile)  # unpickling it would create `marker`
    with pytest.raises(UserError, match="is not a plain tensor weights file") as info:
        inception_extractor(str(hostile))
    assert not marker.exists(), "the file's code ran"
    wrong = tmp_path / "classifier.pth"
    torch.save(_extractor().classifier.state_dict(), wrong)
    with pytest.raises(UserError, match="are not FID Inception v3 weights") as info:
        inception_extractor(str(wrong))
    assert len(str(info.value).splitlines()) == 1


# --- the second signal and the judge's confidence ----------------------------------------------------------------
def test_fid_forget_and_confidence_follow_their_definitions(tiny_ddpm_dir, tiny_classifier_dir):
    """fid_forget is pytorch-fid's Frechet distance of the forget samples' features to the forget-class reference
(held-out sevens);
    forget_confidence is the judge's mean probability of the forgotten class on the forget samples."""
    from conftest import tiny_overrides
    from pytorch_fid.fid_score import calculate_frechet_distance

    from diffunlearn.config_loading import load_config
    from diffunlearn.evaluation.evaluator import make_evaluator
    from diffunlearn.evaluation.judge_loading import load_judge

    cfg = load_config("configs/digits/ddpm_sfron.yaml", tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir) +
                      ["eval.forget_samples=24"])
    model, judge = tiny_ddpm(), load_judge(cfg.eval)
    evaluator = make_evaluator(cfg, model, judge, model, str(tiny_ddpm_dir))
    metrics, _ = evaluator(model)
    images = evaluator.images(model)
    forget = images[evaluator.target_index == 0]
    real = load_digits_splits()[1].select_classes([7]).images  # the held-out reference: the test split's sevens

    def stats(x):
        f = judge.feature_extractor(x).detach().double().numpy()
        return f.mean(0), __import__("numpy").cov(f, rowvar=False)

    expected = calculate_frechet_distance(*stats(forget), *stats(real))
    assert metrics["fid_forget"] == pytest.approx(expected, rel=1e-4)
    assert metrics["forget_confidence"] == pytest.approx(judge.probabilities(forget)[:, 7].double().mean().item(),
                                                          rel=1e-6)
    per_target = [evaluator.fid_forget(images[evaluator.target_index == i]) for i in range(1, 10)]
    assert metrics["fid_forget_nearest_retained"] == pytest.approx(min(per_target))


def test_forgetting_signals_agree_and_disagree_as_their_rule_says():
    from diffunlearn.evaluation.report import forgetting_signals

    base = {"forget_accuracy": 1.0, "forget_confidence": 0.99, "fid_forget": 2.0, "fid_forget_nearest_retained": 200.0}
    threshold = (2.0 * 200.0) ** 0.5  # 20
    gone = {"forget_accuracy": 0.0, "forget_confidence": 0.01, "fid_forget": 100.0}
    stripes = {"forget_accuracy": 0.99, "forget_confidence": 0.67, "fid_forget": 94.0}  # a judge fooled by stripes
    missed = {"forget_accuracy": 0.0, "forget_confidence": 0.2, "fid_forget": 3.0}  # a judge missing a kept target
    assert forgetting_signals(base, gone)["agree"] is True
    assert forgetting_signals(base, gone)["fid_forget_threshold"] == pytest.approx(threshold)
    fooled = forgetting_signals(base, stripes)
    assert (fooled["judge"], fooled["distance"], fooled["agree"]) == ("present", "forgotten", False)
    assert forgetting_signals(base, missed)["agree"] is False
    assert forgetting_signals({"forget_accuracy": 1.0}, gone)["agree"] is None  # no distance signal: no verdict


def test_fa_ra_and_fid_match_an_oracle_built_from_the_protocol_alone(tiny_ddpm_dir, tiny_classifier_dir):
    """Nothing here comes from the evaluator: each image is sampled from its documented seed (eval.seed + 100000 x
    class + j) with the model's own sampler, judged by the classifier's argmax, and FID is pytorch-fid's
    `calculate_frechet_distance` of the classifier's penultimate features against the held-out (test split) digits of
    the retained classes (the config's FID reference), and against their train digits (`fid_retained_train`)."""
    import numpy as np
    from conftest import tiny_overrides
    from pytorch_fid.fid_score import calculate_frechet_distance

    from diffunlearn.config_loading import load_config
    from diffunlearn.evaluation.evaluator import make_evaluator
    from diffunlearn.evaluation.judge_loading import load_judge

    cfg = load_config("configs/digits/ddpm_sfron.yaml", tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir) +
                      ["eval.forget_samples=12", "eval.retained_samples_per_class=6", "eval.batch_size=7"])
    model = tiny_ddpm()
    metrics, _ = make_evaluator(cfg, model, load_judge(cfg.eval), model, str(tiny_ddpm_dir))(model)

    e = cfg.eval
    classifier = DigitsClassifier.from_pretrained(tiny_classifier_dir).eval()

    def sample(c, n):
        generators = [torch.Generator().manual_seed(e.seed + 100_000 * c + j) for j in range(n)]
        return model.sample(torch.full((n,), c), generators, e.num_inference_steps, e.guidance_scale, e.sampler)

    with torch.no_grad():
        fa = (classifier(sample(7, 12)).argmax(-1) == 7).double().mean().item()
        retained = [c for c in range(10) if c != 7]
        kept = {c: sample(c, 6) for c in retained}
        ra = float(np.mean([(classifier(kept[c]).argmax(-1) == c).double().mean().item() for c in retained]))
        train, test = load_digits_splits(cfg.data.split_seed, cfg.data.test_fraction)
        features = PenultimateFeatures(classifier)
        fake_f = features(torch.cat([kept[c] for c in retained])).double().numpy()
        real_f = features(test.select_classes(retained).images).double().numpy()
        train_f = features(train.select_classes(retained).images).double().numpy()
    expected, expected_train = (calculate_frechet_distance(fake_f.mean(0), np.cov(fake_f, rowvar=False),
                                                           f.mean(0), np.cov(f, rowvar=False))
                                for f in (real_f, train_f))
    assert metrics["forget_accuracy"] == pytest.approx(fa, abs=1e-9)
    assert metrics["retained_accuracy"] == pytest.approx(ra, abs=1e-9)
    assert metrics["fid_retained"] == pytest.approx(expected, rel=1e-4), (metrics["fid_retained"], expected)
    assert metrics["fid_retained_train"] == pytest.approx(expected_train, rel=1e-4)


def test_an_evaluators_parts_score_the_same_samples_as_the_whole(tiny_ddpm_dir, tiny_classifier_dir):
    """In-loop checks and the stop's confirmation sample only the part they read ("forget" or "retained"): the same
    seeds, so the same numbers as the whole evaluation's."""
    from conftest import tiny_overrides

    from diffunlearn.config_loading import load_config
    from diffunlearn.evaluation.evaluator import make_evaluator
    from diffunlearn.evaluation.judge_loading import load_judge

    cfg = load_config("configs/digits/ddpm_sfron.yaml", tiny_overrides(tiny_ddpm_dir, tiny_classifier_dir))
    model = tiny_ddpm()
    evaluator = make_evaluator(cfg, model, load_judge(cfg.eval), model, str(tiny_ddpm_dir))
    whole, gallery = evaluator(model)
    (forget, none), (retained, nothing) = evaluator(model, part="forget"), evaluator(model, part="retained")
    assert gallery and none == nothing == {}
    for key in ("forget_accuracy", "forget_accuracy_ci95", "forget_confidence", "fid_forget"):
        assert forget[key] == pytest.approx(whole[key], rel=1e-5) and key not in retained, key
    for key in ("retained_accuracy", "retained_accuracy_ci95", "fid_retained", "fid_retained_train"):
        assert retained[key] == pytest.approx(whole[key], rel=1e-5) and key not in forget, key
    assert set(forget["per_target_accuracy"]) == {7} and set(retained["per_target_accuracy"]) == set(range(10)) - {7}
