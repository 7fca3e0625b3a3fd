"""studies/stats.py: the exact tests and the Holm adjustment, checked by hand."""

from __future__ import annotations

import math

import pytest

from studies import stats


def test_improvement_counts_ties_half() -> None:
    # pairs (x, y): 3 > 1, 3 > 2, 3 = 3 (half), 1 < 2, 1 = 1 (half), 1 < 3: (2 + 0.5 + 0.5) / 6
    assert stats.improvement([3, 1], [1, 2, 3]) == pytest.approx(0.5)
    assert stats.improvement([5, 6, 7], [1, 2, 3]) == 1.0


def test_exact_improvement_p_by_hand() -> None:
    # 3 against 3: C(6, 3) = 20 splits; only the two extreme splits have |P - 0.5| = 0.5: p = 2 / 20
    assert stats.exact_improvement_p([5, 6, 7], [1, 2, 3]) == pytest.approx(0.1)
    # 5 against 5, complete separation: 2 of 252 splits, the smallest p five seeds can give
    assert stats.exact_improvement_p([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == pytest.approx(2 / 252)
    # identical groups: every split is at least as extreme as P = 0.5
    assert stats.exact_improvement_p([1, 1], [1, 1]) == 1.0
    assert math.isnan(stats.exact_improvement_p([], [1.0]))


def test_paired_difference_by_hand() -> None:
    # differences (2, -1, 2), mean 1; the 8 sign assignments sum to +-3, +-5, +-1, +-1: |sum| >= 3 in 4 of 8
    mean, p = stats.paired_difference([3, 1, 2], [1, 2, 0])
    assert mean == pytest.approx(1.0) and p == pytest.approx(0.5)
    # five pairs all of one sign: 2 of 32 assignments, the smallest p five pairs can give (> 0.05)
    assert stats.paired_difference([2, 3, 4, 5, 6], [1, 1, 1, 1, 1])[1] == pytest.approx(2 / 32)


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1: 0.03, 0.06, 0.04 -> monotone 0.03, 0.06, 0.06; None is not a test
    assert stats.holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert stats.holm([0.6, 0.9]) == [1.0, 1.0]


def test_degenerate_interval() -> None:
    assert stats.is_degenerate(1.0, 1.0) and not stats.is_degenerate(0.4, 1.0)
    assert not stats.is_degenerate(math.nan, math.nan)


def test_fast_probability_of_improvement_is_rlibles() -> None:
    """The report's numpy statistic gives rliable's probability of improvement (scipy's Mann-Whitney U / (n·m),
    averaged over tasks), ties included, so its intervals are rliable's on the same resamples."""
    import numpy as np
    from rliable import metrics

    from studies.report import _poi

    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 4, size=(5, 3)).astype(float), rng.integers(0, 4, size=(4, 3)).astype(float)
        assert _poi(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))
