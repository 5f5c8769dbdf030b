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
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "EXACT_UNITS", "N_FLIPS", "N_SHUFFLES", "benjamini_hochberg", "between_groups_p", "holm", "sign_flip_p",
    "smallest_p",
]

EXACT_UNITS = 16  # up to 2**16 sign patterns are enumerated; more units are sampled
N_FLIPS = 20_000
N_SHUFFLES = 5_000


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


def smallest_p(units: int, *, n_flips: int = N_FLIPS) -> float:
    """The smallest p-value ``sign_flip_p`` can give with ``units`` independent units: 2 / 2**units when exact
    (only the observed signs and their mirror reach the observed mean), 1 / (1 + n_flips) when sampled; NaN
    under two units. A design whose floor lies above the threshold cannot show any effect, however large."""
    if units < 2:
        return float("nan")
    return 2.0 / 2**units if units <= EXACT_UNITS else 1.0 / (1 + n_flips)


def between_groups_p(values: Sequence[float], groups: Sequence[object], *, n_shuffles: int = N_SHUFFLES,
                     seed: int = 0) -> float:
    """Permutation p-value of "every group has the same mean", one value per independent unit.

    The statistic is the between-groups sum of squares (sum over groups of n_g x (mean_g - mean)^2); the group
    labels are shuffled among the units ``n_shuffles`` times, the observed labelling counted in
    ((1 + hits) / (1 + n_shuffles)). A moderator test: does an effect differ between subgroups more than
    reassigning the units at random would make it? NaN with fewer than two groups holding a finite value, or
    no more units than groups (nothing left to vary within a group). The units' order does not matter.
    """
    vals = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(vals)
    vals = vals[keep]
    _, codes = np.unique(np.asarray(list(groups), dtype=object)[keep].astype(str), return_inverse=True)
    k = int(codes.max()) + 1 if codes.size else 0
    if k < 2 or vals.size <= k:
        return float("nan")
    order = np.lexsort((vals, codes))  # the same units in any order give the same p (the shuffles are seeded)
    vals, codes = vals[order], codes[order]
    counts = np.bincount(codes, minlength=k)

    def spread(labels: np.ndarray) -> np.ndarray:  # labels: [..., units] -> between-groups sum of squares
        sums = np.stack([np.where(labels == g, vals, 0.0).sum(axis=-1) for g in range(k)], axis=-1)
        return np.sum(sums**2 / counts, axis=-1) - vals.sum() ** 2 / vals.size

    observed = float(spread(codes))
    tolerance = 1e-12 * max(1.0, abs(observed))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_shuffles, 1024):
        shuffled = rng.permuted(np.broadcast_to(codes, (min(1024, n_shuffles - start), codes.size)), axis=1)
        hits += int(np.sum(spread(shuffled) >= observed - tolerance))
    return (1 + hits) / (1 + n_shuffles)


def _adjusted(pvalues: Sequence[float], step: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``step`` applied to the finite p-values in ascending order, written back in the input's order; NaN stays
    NaN and does not count in the family."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size:
        order = finite[np.argsort(p[finite], kind="stable")]
        out[order] = np.minimum(1.0, step(p[order]))
    return out


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order; NaN stays NaN."""
    return _adjusted(pvalues, lambda p: np.maximum.accumulate((p.size - np.arange(p.size)) * p))


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg q-values (false discovery rate), in the input's order; NaN stays NaN."""
    return _adjusted(pvalues, lambda p: np.minimum.accumulate((p * p.size / np.arange(1, p.size + 1))[::-1])[::-1])
