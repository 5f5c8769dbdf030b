"""Figures of an ``emolab eval`` report (and of a tune's held-out stage, ``heldout_effect``), in the same style
as ``emolab.notebook.plots``: each function takes the report and returns a fresh ``Figure`` built without
pyplot (no global state, no GUI backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from emolab.notebook.plots import new_figure

__all__ = ["confusion_heatmap", "effect_curves", "fluency_curves", "heldout_effect", "save_all"]


def effect_curves(report: dict[str, Any]) -> Figure:
    """One panel per steered emotion: the judge's mean probability of every emotion vs alpha."""
    emotions = report["emotions"]
    judge_emotions = list(report["baseline"]["judge_mean"])
    cols = min(3, len(emotions))
    rows = int(np.ceil(len(emotions) / cols))
    fig = new_figure(3.6 * cols, 2.8 * rows, constrained=False)
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    colors = dict(zip(judge_emotions, matplotlib.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, emotion in zip(axes.flat, emotions, strict=False):
        info = report["per_emotion"][emotion]
        alphas = [0.0] + [c["alpha"] for c in info["curve"]]
        for j in judge_emotions:
            ys = [report["baseline"]["judge_mean"][j]] + [c["judge_mean"][j] for c in info["curve"]]
            target = j == emotion
            ax.plot(alphas, ys, marker="o" if target else None, lw=2.5 if target else 1, alpha=1 if target else 0.6,
                    color=colors[j], label=j)
        if info["recommended_alpha"] is not None:
            ax.axvline(info["recommended_alpha"], color="grey", ls=":", lw=1)
        ax.set_title(f"steer {emotion}", fontsize=10)
        ax.set_xlabel(f"alpha ({report.get('scale', 'raw')})", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(emotions):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("judge mean P(emotion)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("Independent judge vs steering strength (bold = steered emotion, dotted = recommended alpha)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    return fig


def fluency_curves(report: dict[str, Any]) -> Figure:
    """Median perplexity (relative to unsteered) and degenerate rate vs alpha, one line per emotion."""
    fig = new_figure(9, 3.2, constrained=False)
    left, right = fig.subplots(1, 2)
    base = report["baseline"]
    for emotion in report["emotions"]:
        curve = report["per_emotion"][emotion]["curve"]
        alphas = [0.0] + [c["alpha"] for c in curve]
        left.plot(alphas, [1.0] + [c["perplexity_median"] / base["perplexity_median"] for c in curve], marker="o",
                  label=emotion)
        right.plot(alphas, [base["degenerate_rate"]] + [c["degenerate_rate"] for c in curve], marker="o",
                   label=emotion)
    factor = report["config"]["ppl_factor"]
    left.axhline(factor, color="grey", ls=":", lw=1)
    left.set_yscale("log")
    left.set_ylabel("median perplexity / unsteered")
    right.set_ylabel("degenerate continuations")
    right.set_ylim(-0.02, 1.02)
    for ax in (left, right):
        ax.set_xlabel(f"alpha ({report.get('scale', 'raw')})")
        ax.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(f"Fluency under the unsteered model (dotted: the {factor}x perplexity limit)", fontsize=10)
    fig.tight_layout()
    return fig


def confusion_heatmap(report: dict[str, Any]) -> Figure:
    """Steered emotion (rows, at its chosen alpha) x judge's mean probability (columns), baseline on top."""
    conf = report["confusion"]
    base = [report["baseline"]["judge_mean"][j] for j in conf["columns"]]
    matrix = np.asarray([base] + conf["matrix"])
    labels = ["unsteered"] + [f"{e} @ {a:g}" for e, a in zip(conf["rows"], conf["alpha"], strict=True)]
    fig = new_figure(1.0 * len(conf["columns"]) + 2.2, 0.5 * len(labels) + 1.4, constrained=False)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(0.5, float(matrix.max())))
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > 0.6 * image.get_clim()[1] else "black")
    ax.set_xticks(range(len(conf["columns"])), conf["columns"], rotation=30, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("judge: mean probability")
    ax.set_ylabel(f"steered emotion @ alpha ({report.get('scale', 'raw')})")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def heldout_effect(heldout: dict[str, Any]) -> Figure:
    """A tune's held-out stage (``report["heldout"]``): per emotion the judge's mean P(target) unsteered and
    steered at the recommended alpha (the change's 95% CI as the error bar), and the fluency cost (median
    perplexity relative to unsteered, degenerate share)."""
    rows = heldout["rows"]
    emotions = list(rows)
    base = heldout["baseline"]
    x = np.arange(len(emotions))
    fig = new_figure(10, 3.4, constrained=False)
    left, right = fig.subplots(1, 2)
    before = [base["judge_mean"][e] for e in emotions]
    after = [rows[e]["target"] for e in emotions]
    errors = np.array([[rows[e]["delta"] - rows[e]["delta_ci95"][0], rows[e]["delta_ci95"][1] - rows[e]["delta"]]
                       for e in emotions]).T
    left.bar(x - 0.2, before, 0.4, color="lightgrey", label="unsteered")
    left.bar(x + 0.2, after, 0.4, yerr=errors, capsize=3, label="steered (recommended alpha)",
             color=[matplotlib.rcParams["axes.prop_cycle"].by_key()["color"][k % 10] for k in range(len(emotions))])
    left.set_xticks(x, emotions, fontsize=8)
    left.set_ylabel("judge mean P(target emotion)")
    left.set_ylim(0, 1)
    left.legend(fontsize=8, frameon=False)
    left.set_title(f"held-out effect ({heldout['n_prompts']} prompts; bars: 95% CI of the change)", fontsize=9)
    right.bar(x - 0.2, [rows[e]["ppl_median"] / base["ppl_median"] for e in emotions], 0.4, label="median ppl / unsteered")
    right.bar(x + 0.2, [rows[e]["degenerate"] for e in emotions], 0.4, label="degenerate share")
    right.axhline(1.0, color="grey", lw=0.8, ls=":")
    right.set_xticks(x, emotions, fontsize=8)
    right.legend(fontsize=8, frameon=False)
    right.set_title(f"fluency cost (unsteered degenerate share {base['degenerate']:.2f})", fontsize=9)
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def save_all(report: dict[str, Any], folder: str | Path, prefix: str = "") -> list[Path]:
    """Write the three figures as PNGs (small: 100 dpi) into ``folder``."""
    folder = Path(folder)
    paths = []
    for name, make in (("effect_curves", effect_curves), ("fluency", fluency_curves), ("confusion", confusion_heatmap)):
        fig = make(report)
        path = folder / f"{prefix}{name}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths
