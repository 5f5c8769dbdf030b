"""The paired test and the corrections, against SciPy's own (``permutation_test``, ``false_discovery_control``) and
hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from emolab.core.stats import EXACT_UNITS, benjamini_hochberg, holm, sign_flip_p


def scipy_sign_flip(diffs, exact):
    return stats.permutation_test((np.asarray(diffs),), np.mean, permutation_type="samples", alternative="two-sided",
                                  n_resamples=np.inf if exact else 20_000, random_state=0).pvalue


def test_sign_flip_by_hand():
    assert sign_flip_p([1, 2, 3]) == 2 / 8  # only all-plus and all-minus reach |mean| 2
    assert sign_flip_p([0.1, 0.1]) == 0.5  # two units can never give p below 1/2
    assert sign_flip_p([1.0, -1.0, 2.0, -2.0]) == 1.0 and sign_flip_p([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(sign_flip_p([0.3])) and math.isnan(sign_flip_p([float("nan"), 1.0]))


@pytest.mark.parametrize("n", [3, 7, EXACT_UNITS])
def test_sign_flip_exact_equals_scipy(n):
    diffs = np.random.default_rng(n).normal(0.4, 1.0, n)
    assert sign_flip_p(diffs) == pytest.approx(scipy_sign_flip(diffs, exact=True), abs=1e-12)


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_sign_flip_sampled_agrees_with_scipy(shift):
    diffs = np.random.default_rng(7).normal(shift, 1.0, 60)  # 2**60 patterns: both sample
    ours, theirs = sign_flip_p(diffs), scipy_sign_flip(diffs, exact=False)
    assert abs(ours - theirs) < 4 * math.sqrt(theirs * (1 - theirs) / 20_000) + 1e-3  # within Monte-Carlo error
    assert sign_flip_p(diffs) == ours and 0 < ours <= 1  # seeded, and never 0


def test_holm_and_bh_by_hand_and_against_scipy():
    p = [0.01, 0.04, 0.03, float("nan"), 0.2]
    assert holm(p)[[0, 1, 2, 4]].tolist() == pytest.approx([0.04, 0.09, 0.09, 0.2])  # 4x, 3x, 2x, 1x, then monotone
    assert math.isnan(holm(p)[3]) and math.isnan(benjamini_hochberg(p)[3])  # no p-value: not in the family
    finite = [0.01, 0.04, 0.03, 0.2]
    assert benjamini_hochberg(p)[[0, 1, 2, 4]].tolist() == pytest.approx(stats.false_discovery_control(finite).tolist())
    many = np.random.default_rng(0).uniform(0, 0.2, 30)
    assert benjamini_hochberg(many).tolist() == pytest.approx(stats.false_discovery_control(many).tolist())
    assert (holm(many) >= benjamini_hochberg(many) - 1e-15).all() and (holm(many) <= 1).all()
    assert holm([]).size == 0 and benjamini_hochberg([float("nan")]).tolist()[0] != 0


def test_the_smallest_p_a_design_can_give():
    from emolab.core.stats import N_FLIPS, smallest_p

    for units in (2, 3, 5, 8):
        assert smallest_p(units) == 2 / 2**units == sign_flip_p([0.1 * (k + 1) for k in range(units)])  # attained
    assert smallest_p(40) == 1 / (1 + N_FLIPS) and math.isnan(smallest_p(1))
