"""Figures of an ``emolab eval`` report (and of a tune's held-out stage, ``heldout_effect``) for the notebooks:
each function takes the report and returns a fresh ``Figure`` built without pyplot. They live in
``emolab.evaluate.effect_figures`` (so the report writers save and link them); this module keeps the
notebooks' names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emolab.evaluate.effect_figures import (
    EVAL_FIGURES,
    confusion_heatmap,
    effect_curves,
    fluency_curves,
    heldout_effect,
    write_figures,
)

__all__ = ["confusion_heatmap", "effect_curves", "fluency_curves", "heldout_effect", "save_all"]


def save_all(report: dict[str, Any], folder: str | Path, prefix: str = "") -> list[Path]:
    """Write the three figures as PNGs (100 dpi) into ``folder``: ``<prefix>effect_curves.png``,
    ``<prefix>fluency.png``, ``<prefix>confusion.png``."""
    return [Path(folder) / name for name in write_figures(report, EVAL_FIGURES, folder, prefix).values()]
