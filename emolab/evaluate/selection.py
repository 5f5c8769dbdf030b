"""Summarize steered conditions against the baseline, check the fluency limits, pick a winner per emotion.

The numbers (all paired per prompt against the unsteered baseline on the same prompts):

* ``delta``: mean change of the judge's probability of the target emotion, with a 95% bootstrap CI;
* ``hit_rate``: share of continuations whose judge argmax is the target;
* ``ppl_median``: median perplexity of the continuations under the unsteered model;
* ``degenerate``: share of looping or near-empty continuations; ``question``: share ending in "?".

The limits are the ones of ``emolab eval`` (median perplexity <= 2 x baseline, degenerate rate <=
baseline + 0.1) plus, for surprise, a "?" share <= baseline + 0.2 (the judge reads questions as
surprise). Choosing uses tighter *selection* limits, so a choice that sits at a limit on tuning
prompts is not taken (with 48 prompts one text moves a rate by 2 points).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from emolab.evaluate.metrics import bootstrap_ci

__all__ = ["Limits", "SELECTION_RULE", "choose", "score_of", "summarize"]

SELECTION_RULE = ("highest delta + 0.5 x hit rate among conditions within the selection limits; where none is "
                  "within them, the one that breaks them least")


@dataclass(frozen=True)
class Limits:
    ppl_factor: float = 2.0
    degenerate_tolerance: float = 0.1
    question_tolerance: float = 0.2  # surprise only

    def tighter(self, ppl: float = 0.2, degenerate: float = 0.05, question: float = 0.05) -> Limits:
        """Limits with a margin: one or two texts of 48 decide a rate, and perplexity drifts between prompt sets."""
        return Limits(self.ppl_factor - ppl, self.degenerate_tolerance - degenerate, self.question_tolerance - question)

    def excess(self, row: dict[str, Any], base: dict[str, Any]) -> float:
        """How far a condition is past the limits (0 inside them), in units of each limit's own slack."""
        over = max(0.0, row["ppl_median"] / (self.ppl_factor * base["ppl_median"]) - 1.0) \
            if np.isfinite(row["ppl_median"]) and np.isfinite(base["ppl_median"]) else 0.0
        over += max(0.0, row["degenerate"] - base["degenerate"] - self.degenerate_tolerance) / 0.1
        if row.get("emotion") == "surprise":
            over += max(0.0, row["question"] - base["question"] - self.question_tolerance) / 0.1
        return over

    def within(self, row: dict[str, Any], base: dict[str, Any]) -> bool:
        return self.excess(row, base) == 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(arrays: dict[str, np.ndarray], base: dict[str, np.ndarray] | None, target: int | None,
              judge_emotions: list[str], seed: int = 0) -> dict[str, Any]:
    """The numbers of one condition (``arrays`` from ``generation.score``; ``base``: the baseline's)."""
    proba = arrays["proba"]
    finite = arrays["ppl"][np.isfinite(arrays["ppl"])]
    row: dict[str, Any] = {
        "n": int(len(proba)),
        "judge_mean": {e: round(float(v), 4) for e, v in zip(judge_emotions, proba.mean(axis=0), strict=True)},
        "argmax_counts": {e: int(np.sum(proba.argmax(axis=1) == i)) for i, e in enumerate(judge_emotions)},
        "ppl_median": float(np.median(finite)) if len(finite) else float("nan"),
        "degenerate": float(np.mean(arrays["degenerate"])),
        "question": float(np.mean(arrays["question"])),
        "distinct_2": float(np.mean(arrays["distinct_2"])),
        "mean_tokens": float(np.mean(arrays["n_tokens"])),
    }
    if target is not None and base is not None:
        delta = proba[:, target] - base["proba"][:, target]
        lo, hi = bootstrap_ci(delta, seed=seed)
        row.update(target=float(proba[:, target].mean()), delta=float(delta.mean()), delta_ci95=[lo, hi],
                   hit_rate=float(np.mean(proba.argmax(axis=1) == target)))
    return row


def score_of(row: dict[str, Any]) -> float:
    """What the selection maximizes: judged effect plus half the hit rate."""
    return float(row["delta"] + 0.5 * row["hit_rate"])


def choose(rows: list[dict[str, Any]], base: dict[str, Any], limits: Limits) -> dict[str, Any] | None:
    """The winner among one emotion's conditions by ``SELECTION_RULE``; None when there are none."""
    if not rows:
        return None
    inside = [r for r in rows if limits.within(r, base)]
    if inside:
        return max(inside, key=lambda r: (score_of(r), -r["alpha"]))
    return min(rows, key=lambda r: (limits.excess(r, base), -score_of(r)))
