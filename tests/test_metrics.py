"""Evaluation metrics: FID invariants, forget / retained accuracy with a rigged classifier, sampling seeds."""

import torch

from conftest import tiny_ddpm
from diffunlearn.assets import resolve_model_path
from diffunlearn.classifier import DigitsClassifier, PenultimateFeatures
from diffunlearn.config import EvalConfig
from diffunlearn.data import load_digits_splits
from diffunlearn.evaluation.metrics import FID, classify, generate, labels_and_seeds, per_class_accuracy


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
    import pytest

    from diffunlearn.config import load_config
    from diffunlearn.errors import UserError
    from diffunlearn.evaluation.metrics import inception_extractor

    with pytest.raises(UserError, match="needs eval.inception_weights"):
        load_config("configs/digits/ddpm_sfron.yaml", ["eval.fid_features=inception"])
    with pytest.raises(UserError, match="is not a file"):
        inception_extractor(str(tmp_path / "missing.pth"))
