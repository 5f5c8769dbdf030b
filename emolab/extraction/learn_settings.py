"""How ``learned`` directions are fitted (``emolab.extraction.learned``); torch-free, so the CLI can
offer the defaults without importing torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from emolab.extraction.errors import ExtractError

__all__ = ["LearnSettings", "check_window"]


@dataclass(frozen=True)
class LearnSettings:
    steps: int = 60
    alpha: float = 0.33  # the push while learning, on the normalized scale
    layers: str | None = None  # the window pushed while learning (a layer selector); None: the middle half of the search
    split: str = "dev"  # GoEmotions split the answers come from
    pairs: int = 96  # fixed (emotion text, other text) pairs per emotion; their reference log-probs are computed once
    batch: int = 8  # pairs per step
    lr: float = 0.003
    beta: float = 5.0
    fluency_weight: float = 0.0  # measured on SmolLM2: 1.0 (with core labels) looped more replies than 0.0
    max_answer_tokens: int = 48

    def check(self) -> None:
        for name in ("steps", "pairs", "batch", "max_answer_tokens"):
            if getattr(self, name) < (0 if name == "steps" else 1):
                raise ExtractError(f"learned: {name} must be positive, got {getattr(self, name)}", setting=f"learn_{name}")
        if not self.alpha > 0:
            raise ExtractError(f"learned: the push must be positive, got alpha {self.alpha}", setting="learn_alpha")
        if self.batch > self.pairs:
            raise ExtractError(f"learned: a batch of {self.batch} pairs needs at least as many pairs "
                               f"(got {self.pairs})", setting="learn_batch")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_window(window: Sequence[int], search: Sequence[int]) -> None:
    """The layers pushed while learning need start vectors and residual norms, so they must lie in the search."""
    missing = [layer for layer in window if layer not in search]
    if missing:
        raise ExtractError(f"learned: window layers {missing} are not among the searched layers {list(search)}",
                           setting="learn_layers")
