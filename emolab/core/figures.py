"""The one figure style of every emolab plot: a fresh Agg figure (no pyplot) and one colour per emotion.

Plots are built without pyplot, so nothing leaks between calls, no GUI backend is touched, and the
same functions serve notebooks (``display(fig)``), reports (``fig.savefig``), servers and tests.
matplotlib is imported on first use: the core stays importable without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EMOTION_COLORS", "emotion_color", "new_figure"]

# One colour per emotion, stable across plots (tab10 order; DEFAULT_EMOTIONS take the first six).
EMOTION_COLORS = ["#d62728", "#2ca02c", "#1f77b4", "#8c564b", "#9467bd", "#ff7f0e", "#17becf", "#7f7f7f",
                  "#bcbd22", "#e377c2"]


def emotion_color(index: int) -> str:
    return EMOTION_COLORS[index % len(EMOTION_COLORS)]


def new_figure(width: float, height: float, *, constrained: bool = True) -> Any:
    """A fresh figure on its own Agg canvas: savefig never consults pyplot's global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig
