"""Wilson 95% intervals beside every share the project reports (FA, retained accuracy, ASR)."""

import math

import numpy as np
import pytest

from diffunlearn.evaluation.metrics import Z95, share_interval, wilson_interval, with_interval


def oracle(successes: int, n: int) -> list:
    """The Wilson interval as the roots of (p_hat - p)^2 = z^2 p (1 - p) / n, a quadratic in p."""
    z2, p_hat = Z95 ** 2, successes / n
    roots = np.roots([1 + z2 / n, -(2 * p_hat + z2 / n), p_hat ** 2])
    return sorted(float(np.real(r)) for r in roots)


@pytest.mark.parametrize("successes, n", [(0, 200), (6, 16), (10, 16), (1, 64), (64, 64), (37, 100), (1, 1)])
def test_wilson_interval_solves_the_score_equation(successes, n):
    low, high = wilson_interval(successes, n)
    assert [low, high] == pytest.approx(oracle(successes, n), abs=1e-12)
    assert 0.0 <= low <= successes / n <= high <= 1.0


def test_known_values_and_edges():
    assert wilson_interval(6, 16) == pytest.approx([0.1848, 0.6136], abs=1e-4)  # the "6 of 16" example
    assert wilson_interval(0, 200)[0] == 0.0 and wilson_interval(0, 200)[1] == pytest.approx(0.01885, abs=1e-5)
    assert wilson_interval(0, 0) == [0.0, 1.0]
    assert share_interval(0.375, 16) == wilson_interval(6, 16)
    assert with_interval(0.375, wilson_interval(6, 16)) == "0.375 [0.185, 0.614]"
    widths = [wilson_interval(n // 2, n)[1] - wilson_interval(n // 2, n)[0] for n in (10, 100, 1000)]
    assert widths == sorted(widths, reverse=True)
    assert math.isclose(widths[-1], 2 * Z95 * 0.5 / math.sqrt(1000), rel_tol=0.01)  # the normal limit
