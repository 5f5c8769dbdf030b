"""Figures of a simulation run (the style of ``emolab.core.figures``: fresh Agg figures, one colour per emotion).

Each function takes the tables of ``emolab.simulate.analysis`` and returns a ``Figure``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from emolab.core.emotions import DEFAULT_EMOTIONS
from emolab.core.figures import EMOTION_COLORS, new_figure

__all__ = ["amount_plot", "bias_plot", "condition_plot", "contagion_plot", "dose_plot", "subgroup_plot"]

KIND_COLORS = {"control": "#7f7f7f", "prompted": "#bcbd22", "steered": "#1f77b4", "steered+prompted": "#17becf"}


def _emotion_color(emotion: str, order: list[str]) -> str:
    index = list(DEFAULT_EMOTIONS).index(emotion) if emotion in DEFAULT_EMOTIONS else len(DEFAULT_EMOTIONS) + order.index(emotion)
    return EMOTION_COLORS[index % len(EMOTION_COLORS)]


def condition_plot(table: pd.DataFrame, what: str) -> Any:
    """Each condition's effect against the control with its 95% CI, coloured by condition kind; a filled marker where
    the effect holds after the experiment's false-discovery correction (``q_bh`` < 0.05), a hollow one where not."""
    rows = table[table["kind"] != "control"].reset_index(drop=True)
    fig = new_figure(7.5, 0.9 + 0.24 * max(len(rows), 1))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    tested = "q_bh" in rows
    for i, row in rows.iterrows():
        color = KIND_COLORS.get(row["kind"], "#333333")
        holds = not tested or row["q_bh"] < 0.05
        ax.errorbar(row["effect"], y[i], xerr=[[row["effect"] - row["effect_low"]], [row["effect_high"] - row["effect"]]],
                    fmt="o", color=color, ecolor=color, capsize=2, markersize=4,
                    markerfacecolor=color if holds else "white")
    ax.axvline(0, color="#444444", linewidth=0.8)
    ax.set_yticks(y, rows["condition"].tolist(), fontsize=7)
    ax.set_xlabel(f"effect on {what} vs control (95% bootstrap CI)"
                  + ("\nhollow: not held after the false-discovery correction (q >= 0.05)" if tested else ""))
    for kind, color in KIND_COLORS.items():
        if kind != "control" and (rows["kind"] == kind).any():
            ax.plot([], [], "o", color=color, label=kind)
    ax.legend(fontsize=7, loc="best")
    return fig


def dose_plot(dose: pd.DataFrame, what: str) -> Any:
    """Effect against alpha (multiples of the recommended alpha) per emotion, with CIs."""
    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot()
    emotions = dose["emotion"].drop_duplicates().tolist() if len(dose) else []
    for emotion in emotions:
        sub = dose[dose["emotion"] == emotion].sort_values("multiple")
        color = _emotion_color(emotion, emotions)
        ax.plot(sub["multiple"], sub["effect"], marker="o", markersize=3, color=color, label=emotion)
        ax.fill_between(sub["multiple"], sub["effect_low"], sub["effect_high"], color=color, alpha=0.12)
    ax.axhline(0, color="#444444", linewidth=0.8)
    ax.set_xlabel("alpha (multiple of the recommended alpha; 0 = control)")
    ax.set_ylabel(f"effect on {what}")
    if emotions:
        ax.legend(fontsize=7, ncol=2)
    return fig


def bias_plot(table: pd.DataFrame) -> Any:
    """Label bias and position bias under each condition (0 = none): reported beside the effect, never in it."""
    fig = new_figure(7.5, 0.9 + 0.24 * max(len(table), 1))
    ax = fig.add_subplot()
    y = np.arange(len(table))[::-1]
    ax.barh(y + 0.2, table["label_bias"], height=0.4, color="#9467bd", label="label bias (first label)")
    ax.barh(y - 0.2, table["position_bias"], height=0.4, color="#ff7f0e", label="position bias (shown first)")
    ax.axvline(0, color="#444444", linewidth=0.8)
    ax.set_yticks(y, table["condition"].tolist(), fontsize=7)
    ax.set_xlabel("probability above chance")
    ax.legend(fontsize=7)
    return fig


def contagion_plot(by_turn: pd.DataFrame) -> Any:
    """The unseeded agents' judged emotion against the control, turn by turn, per condition."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(8.0, 3.6)
    ax = fig.add_subplot()
    sub = by_turn[by_turn["agents"] == "unseeded"] if len(by_turn) else by_turn
    names = sub["condition"].drop_duplicates().tolist() if len(sub) else []
    emotions = sub["emotion"].drop_duplicates().tolist() if len(sub) else []
    styles = {"steered": "-", "prompted": "--", "steered+prompted": ":"}
    for name in names:
        part = sub[sub["condition"] == name].sort_values("turn")
        color = _emotion_color(part["emotion"].iloc[0], emotions)
        ax.plot(part["turn"], part["effect"], styles.get(part["kind"].iloc[0], "-"), marker="o", markersize=3,
                color=color, label=name)
        ax.fill_between(part["turn"], part["effect_low"], part["effect_high"], color=color, alpha=0.08)
    ax.axhline(0, color="#444444", linewidth=0.8)
    ax.set_xlabel("turn")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("judged emotion of unseeded agents\nminus control")
    if names:  # beside the axes, long handles: 12 conditions' ribbons leave no room inside, dashes must show
        ax.legend(fontsize=6, handlelength=3.2, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def subgroup_plot(per_level: pd.DataFrame, by: str, what: str) -> Any:
    """Each condition's effect (rows) within each level of ``by`` (columns), on a scale centred on 0; a dot where
    the effect holds after the false-discovery correction across all cells (``q_bh`` < 0.05)."""
    rows = per_level[per_level["kind"] != "control"]
    conditions = rows["condition"].drop_duplicates().tolist()
    levels = sorted(rows[by].drop_duplicates().tolist(), key=str)
    grid = rows.pivot_table(index="condition", columns=by, values="effect", aggfunc="first").reindex(
        index=conditions, columns=levels)
    holds = rows.pivot_table(index="condition", columns=by, values="q_bh", aggfunc="first").reindex(
        index=conditions, columns=levels) < 0.05
    fig = new_figure(2.5 + 0.32 * max(len(levels), 1), 1.2 + 0.22 * max(len(conditions), 1))
    ax = fig.add_subplot()
    limit = float(np.nanmax(np.abs(grid.to_numpy()))) if grid.notna().any().any() else 1.0
    image = ax.imshow(grid.to_numpy(dtype=float), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ys, xs = np.nonzero(holds.to_numpy(dtype=bool))
    ax.plot(xs, ys, "o", color="black", markersize=2.5, linestyle="none")
    ax.set_yticks(range(len(conditions)), conditions, fontsize=7)
    ax.set_xticks(range(len(levels)), [str(v) for v in levels], fontsize=7, rotation=60, ha="right")
    ax.set_xlabel(f"persona {by} (dot: holds at q_bh < 0.05 across all cells)")
    fig.colorbar(image, ax=ax, label=f"effect on {what} vs control", shrink=0.8)
    return fig


def amount_plot(probs: pd.DataFrame, what: str, *, least: float = 0.01) -> Any:
    """Each condition's mean probability of every amount (columns: the amounts with at least ``least`` of the mass
    under some condition), a row per condition: where the model's answer would fall, not only where one reply did."""
    shown = probs.groupby("amount")["probability"].max()
    amounts = sorted(shown[shown >= least].index.tolist())
    conditions = probs["condition"].drop_duplicates().tolist()
    grid = probs.pivot_table(index="condition", columns="amount", values="probability", aggfunc="first").reindex(
        index=conditions, columns=amounts).fillna(0.0)
    fig = new_figure(2.8 + 0.34 * max(len(amounts), 1), 1.2 + 0.22 * max(len(conditions), 1))
    ax = fig.add_subplot()
    image = ax.imshow(grid.to_numpy(dtype=float), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), p in np.ndenumerate(grid.to_numpy(dtype=float)):
        if p >= 0.05:
            ax.text(j, i, f"{p:.2f}"[1:] if p < 1 else "1", ha="center", va="center", fontsize=5.5,
                    color="white" if p > 0.6 else "black")
    ax.set_yticks(range(len(conditions)), conditions, fontsize=7)
    ax.set_xticks(range(len(amounts)), [f"{a:g}" for a in amounts], fontsize=7, rotation=60, ha="right")
    ax.set_xlabel(f"{what} (amounts with at least {least:g} of the mass under some condition)")
    fig.colorbar(image, ax=ax, label="mean probability", shrink=0.8)
    return fig
