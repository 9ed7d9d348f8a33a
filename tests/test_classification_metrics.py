"""Classification unlearning metrics on rigged inputs with known answers: FA / RA / TA, MIA, D_KL, Avg.D."""

import math

import pytest
import torch

from diffunlearn.errors import UserError
from diffunlearn.evaluation.classification import (accuracy, average_gap, classification_report, kl_to_retrained,
                                                   mia_efficacy, mia_member_rate, prediction_entropy)

CONFIDENT, UNSURE = 12.0, 0.01  # logit of the predicted class; 0.01 gives a nearly uniform prediction


class RiggedClassifier(torch.nn.Module):
    """Logits read from the image: pixel (0, 0, 0) * 10 is the predicted class, pixel (0, 0, 1) its logit."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        onehot = torch.nn.functional.one_hot((images[:, 0, 0, 0] * 10).round().long(), 10).float()
        return onehot * images[:, 0, 0, 1:2]


def rigged_images(classes, logits):
    images = torch.zeros(len(classes), 1, 8, 8)
    images[:, 0, 0, 0] = torch.tensor(classes, dtype=torch.float) / 10
    images[:, 0, 0, 1] = torch.tensor(logits, dtype=torch.float)
    return images


def logits_for(classes, value):
    return torch.nn.functional.one_hot(torch.tensor(classes), 10).float() * value


def test_accuracy_from_logits_and_from_a_model():
    labels = torch.tensor([7, 7, 7, 7, 1, 1, 2, 2])
    predicted = [7, 3, 7, 0, 1, 1, 2, 5]
    assert accuracy(logits_for(predicted, CONFIDENT), labels) == 5 / 8
    assert accuracy(rigged_images(predicted, [CONFIDENT] * 8), labels, model=RiggedClassifier()) == 5 / 8
    assert math.isnan(accuracy(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long)))


def test_prediction_entropy_of_uniform_and_confident_predictions():
    entropy = prediction_entropy(torch.stack([torch.zeros(10), logits_for([3], 40.0)[0]]))
    assert entropy[0].item() == pytest.approx(math.log(10))
    assert entropy[1].item() == pytest.approx(0.0, abs=1e-12)


def _mia_sets():
    """Retain confident (members), test uniform (non-members); D_f: 3 confident, 1 uniform."""
    gen = torch.Generator().manual_seed(0)
    retain = logits_for(list(range(10)) * 3, CONFIDENT) + 0.1 * torch.rand(30, 10, generator=gen)
    test = 0.1 * torch.rand(20, 10, generator=gen)
    forget = torch.cat([logits_for([1, 2, 3], CONFIDENT), torch.zeros(1, 10)])
    return forget, retain, test


def test_mia_efficacy_and_member_rate_with_known_answers():
    forget, retain, test = _mia_sets()
    assert mia_member_rate(forget, retain, test) == 0.75
    assert mia_efficacy(forget, retain, test) == 0.25, "SalUn convention: share of D_f predicted as non-members"
    images = rigged_images([1, 2, 3, 4], [CONFIDENT, CONFIDENT, CONFIDENT, UNSURE])
    members = rigged_images(list(range(10)), [CONFIDENT] * 10)
    non_members = rigged_images(list(range(10)), [UNSURE] * 10)
    assert mia_efficacy(images, members, non_members, model=RiggedClassifier()) == 0.25
    with pytest.raises(UserError, match="needs retain and test samples"):
        mia_efficacy(forget, retain, test[:0])


def test_kl_to_retrained_is_zero_for_identical_predictions_and_matches_a_hand_computed_value():
    logits = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    assert kl_to_retrained(logits, logits) == pytest.approx(0.0, abs=1e-12)
    rt = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    model = torch.log(torch.tensor([[0.9, 0.1]], dtype=torch.float64))
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl_to_retrained(model, rt) == pytest.approx(expected, rel=1e-9)
    assert kl_to_retrained(rt, model) != pytest.approx(expected), "KL(RT || model), not the reverse"


def test_average_gap_arithmetic():
    metrics = {"FA": 0.2, "RA": 0.9, "TA": 0.8, "MIA": 0.6}
    rt = {"FA": 0.0, "RA": 1.0, "TA": 0.85, "MIA": 0.7}
    assert average_gap(metrics, rt) == pytest.approx((0.2 + 0.1 + 0.05 + 0.1) / 4)
    assert average_gap(metrics, metrics) == 0.0
    with pytest.raises(UserError, match="missing"):
        average_gap({"FA": 0.1}, rt)


def test_classification_report_with_rigged_models():
    model = RiggedClassifier()
    forget = (rigged_images([7, 7, 3, 7], [CONFIDENT, CONFIDENT, CONFIDENT, UNSURE]), torch.tensor([7, 7, 7, 7]))
    retain = (rigged_images(list(range(10)), [CONFIDENT] * 10), torch.arange(10))
    test = (rigged_images([0, 1, 2, 3, 4], [UNSURE] * 5), torch.tensor([0, 1, 2, 9, 9]))
    report = classification_report(model, model, forget, retain, test)
    assert report["FA"] == 0.75 and report["RA"] == 1.0 and report["TA"] == 0.6
    assert report["MIA"] == 0.25 and report["MIA_member_rate"] == 0.75
    assert report["D_KL"] == pytest.approx(0.0, abs=1e-12) and report["Avg.D"] == 0.0
    assert report["RT"]["FA"] == 0.75
    assert "D_KL" not in classification_report(model, None, forget, retain, test)
