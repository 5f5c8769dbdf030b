"""Tests and corrections for paired effects: a sign-flip permutation test and the Holm and Benjamini-Hochberg
adjustments across a family of comparisons.

An experiment compares many conditions (emotions x alphas x steered / prompted) with one control; read one by
one, some intervals will miss zero by chance. ``sign_flip_p`` tests a paired effect on its independent units'
mean differences (under no effect each unit's difference is as likely negative as positive), exact when the
units are few and by random flips otherwise; it assumes nothing of the differences' distribution, as the
percentile bootstrap beside it does not. ``holm`` controls the chance of any false positive in the family,
``benjamini_hochberg`` the expected share of false positives among the effects called real.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

__all__ = ["EXACT_UNITS", "N_FLIPS", "benjamini_hochberg", "holm", "sign_flip_p"]

EXACT_UNITS = 16  # up to 2**16 sign patterns are enumerated; more units are sampled
N_FLIPS = 20_000


def sign_flip_p(differences: Sequence[float], *, n_flips: int = N_FLIPS, seed: int = 0) -> float:
    """Two-sided p-value of "the mean paired difference is 0", one difference per independent unit.

    Exact (every sign pattern) for up to ``EXACT_UNITS`` units, else from ``n_flips`` random patterns with the
    observed one counted in ((1 + hits) / (1 + n_flips): never 0). NaN with fewer than two finite differences, and
    1.0 when every difference is 0.
    """
    diffs = np.asarray(differences, dtype=np.float64)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size < 2:
        return float("nan")
    observed = abs(diffs.mean())
    if observed == 0:
        return 1.0
    tolerance = 1e-12 * max(1.0, float(np.abs(diffs).max()))  # equal means that differ only by rounding are ties
    if diffs.size <= EXACT_UNITS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=diffs.size)))
        means = np.abs(signs @ diffs) / diffs.size
        return float(np.mean(means >= observed - tolerance))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_flips, 4096):  # in blocks: n_flips x units signs at once would be large
        signs = rng.choice((1.0, -1.0), size=(min(4096, n_flips - start), diffs.size))
        hits += int(np.sum(np.abs(signs @ diffs) / diffs.size >= observed - tolerance))
    return (1 + hits) / (1 + n_flips)


def _clean(pvalues: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pvalues, dtype=np.float64)
    return p, np.flatnonzero(np.isfinite(p))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order; NaN stays NaN and does not
    count in the family."""
    p, finite = _clean(pvalues)
    out = np.full(p.shape, np.nan)
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg q-values (false discovery rate), in the input's order; NaN stays NaN and does not
    count in the family."""
    p, finite = _clean(pvalues)
    out = np.full(p.shape, np.nan)
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return out
