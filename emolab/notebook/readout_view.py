"""The readout in a notebook: tokens coloured by emotion score (HTML), and per-emotion curves over the tokens.

``token_html(result, emotion)`` colours each token by one emotion's score (red above the reference's mean,
blue below; attention sinks grey), every score in the token's tooltip; ``side_by_side`` puts two readouts
(an unsteered and a steered reply, say) next to each other; ``readout_curves`` draws every emotion's
score over the tokens, with the chat's messages marked. Plain HTML and matplotlib: JupyterLab renders both.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from emolab.core.figures import emotion_color, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from emolab.steer.readout import ReadoutResult

__all__ = ["readout_curves", "side_by_side", "token_html"]

SATURATION = 2.5  # a score this far from 0 (standard deviations, on the standardized scale) is full colour


def _colour(score: float, saturation: float) -> str:
    strength = min(abs(score) / saturation, 1.0) if np.isfinite(score) else 0.0
    alpha = round(0.85 * strength, 3)
    return f"rgba(214, 39, 40, {alpha})" if score >= 0 else f"rgba(31, 119, 180, {alpha})"


def token_html(result: ReadoutResult, emotion: str, *, start: int = 0, saturation: float = SATURATION) -> str:
    """The tokens from ``start`` on, each on a background coloured by its ``emotion`` score."""
    if emotion not in result.emotions:
        raise ValueError(f"unknown emotion {emotion!r}; the readout has {result.emotions}")
    column = result.emotions.index(emotion)
    spans = []
    for t in range(start, len(result.token_ids)):
        text = html.escape(result.tokens[t]).replace("\n", "↵<br>")
        tip = html.escape(", ".join(f"{e} {result.scores[t, i]:+.2f}" for i, e in enumerate(result.emotions)))
        if result.sinks[t]:
            spans.append(f'<span title="attention sink: {tip}" style="background:#ddd;color:#777">{text}</span>')
        else:
            colour = _colour(float(result.scores[t, column]), saturation)
            spans.append(f'<span title="{tip}" style="background:{colour};border-radius:2px">{text}</span>')
    return (f'<div style="font-family:monospace;line-height:1.8;white-space:pre-wrap">{"".join(spans)}</div>')


def side_by_side(results: Sequence[ReadoutResult], titles: Sequence[str], emotion: str, *,
                 starts: Sequence[int] | None = None, saturation: float = SATURATION) -> str:
    """Readouts in columns, each titled with its mean ``emotion`` score over the shown (non-sink) tokens."""
    starts = list(starts) if starts is not None else [0] * len(results)
    cells = []
    for result, title, start in zip(results, titles, starts, strict=True):
        mean = result.mean(start)[emotion]
        cells.append(f'<td style="vertical-align:top;padding:6px;width:{100 // max(len(results), 1)}%">'
                     f"<b>{html.escape(title)}</b> &nbsp; mean {html.escape(emotion)} {mean:+.2f}"
                     f"{token_html(result, emotion, start=start, saturation=saturation)}</td>")
    legend = (f"<small>{html.escape(emotion)} score: red above, blue below the reference mean; full colour at "
              f"±{saturation:g}; grey: attention sink; hover a token for every score. "
              f"Scale: {html.escape(results[0].scale.meaning) if results else ''}</small>")
    return f'<table style="width:100%"><tr>{"".join(cells)}</tr></table>{legend}'


def readout_curves(result: ReadoutResult, emotions: Sequence[str] | None = None, *, title: str = "") -> Figure:
    """Each emotion's score over the token positions (sinks left out), the chat's messages shaded by role."""
    emotions = list(emotions or result.emotions)
    fig = new_figure(9.0, 3.4)
    ax = fig.add_subplot()
    positions = np.arange(len(result.token_ids))
    keep = ~result.sinks
    for emotion in emotions:
        index = result.emotions.index(emotion)
        ax.plot(positions[keep], result.scores[keep, index], label=emotion, linewidth=1.3, color=emotion_color(index))
    for k, (role, lo, hi) in enumerate(result.segments or []):
        if k % 2:
            ax.axvspan(lo - 0.5, hi - 0.5, color="0.93", zorder=0)
        ax.text((lo + hi) / 2, 1.0, role, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xlabel("token position")
    ax.set_ylabel("score" if result.scale.kind != "standardized" else "score (SD from reference mean)")
    ax.set_title(title or "emotion readout per token")
    ax.legend(loc="upper left", fontsize=8, ncol=min(len(emotions), 6))
    return fig
