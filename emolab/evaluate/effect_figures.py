"""The figures of the eval and tune reports: each function takes a report and returns a fresh ``Figure``
(``core.figures.new_figure``: no pyplot), so the report writers save and link them and notebooks display them.

* an ``emolab eval`` sweep (``EVAL_FIGURES``): the judge against alpha per steered emotion, fluency against
  alpha, and the confusion of steered emotion by judged emotion at the chosen alpha;
* a tune's held-out evaluation (``HELDOUT_FIGURES``, ``report["heldout"]``): the judged target probability
  unsteered and steered at each emotion's recommended alpha with the fluency cost, and the same confusion.

``write_figures`` saves a set as PNGs and returns the file names a report links.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from emolab.core.figures import emotion_color, new_figure

__all__ = ["EVAL_FIGURES", "HELDOUT_FIGURES", "confusion_heatmap", "effect_curves", "fluency_curves",
           "heldout_confusion", "heldout_effect", "write_figures"]


def effect_curves(report: dict[str, Any]) -> Any:
    """One panel per steered emotion: the judge's mean probability of every emotion vs alpha."""
    emotions = report["emotions"]
    judge_emotions = list(report["baseline"]["judge_mean"])
    cols = min(3, len(emotions))
    rows = int(np.ceil(len(emotions) / cols))
    fig = new_figure(3.6 * cols, 2.8 * rows, constrained=False)
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    for ax, emotion in zip(axes.flat, emotions, strict=False):
        info = report["per_emotion"][emotion]
        alphas = [0.0] + [c["alpha"] for c in info["curve"]]
        for k, j in enumerate(judge_emotions):
            ys = [report["baseline"]["judge_mean"][j]] + [c["judge_mean"][j] for c in info["curve"]]
            target = j == emotion
            ax.plot(alphas, ys, marker="o" if target else None, lw=2.5 if target else 1, alpha=1 if target else 0.6,
                    color=emotion_color(k), label=j)
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


def fluency_curves(report: dict[str, Any]) -> Any:
    """Median perplexity (relative to unsteered) and degenerate rate vs alpha, one line per emotion."""
    fig = new_figure(9, 3.2, constrained=False)
    left, right = fig.subplots(1, 2)
    base = report["baseline"]
    for k, emotion in enumerate(report["emotions"]):
        curve = report["per_emotion"][emotion]["curve"]
        alphas = [0.0] + [c["alpha"] for c in curve]
        left.plot(alphas, [1.0] + [c["perplexity_median"] / base["perplexity_median"] for c in curve], marker="o",
                  label=emotion, color=emotion_color(k))
        right.plot(alphas, [base["degenerate_rate"]] + [c["degenerate_rate"] for c in curve], marker="o",
                   label=emotion, color=emotion_color(k))
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


def _matrix_plot(matrix: np.ndarray, labels: list[str], columns: list[str], ylabel: str) -> Any:
    fig = new_figure(1.0 * len(columns) + 2.2, 0.5 * len(labels) + 1.4, constrained=False)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(0.5, float(matrix.max())))
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > 0.6 * image.get_clim()[1] else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=30, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("judge: mean probability")
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def confusion_heatmap(report: dict[str, Any]) -> Any:
    """Steered emotion (rows, at its chosen alpha) x judge's mean probability (columns), baseline on top."""
    conf = report["confusion"]
    base = [report["baseline"]["judge_mean"][j] for j in conf["columns"]]
    matrix = np.asarray([base] + conf["matrix"])
    labels = ["unsteered"] + [f"{e} @ {a:g}" for e, a in zip(conf["rows"], conf["alpha"], strict=True)]
    return _matrix_plot(matrix, labels, conf["columns"], f"steered emotion @ alpha ({report.get('scale', 'raw')})")


def heldout_confusion(report: dict[str, Any]) -> Any:
    """A tune's held-out evaluation: each emotion steered at its recommended alpha (rows) x the judge's mean
    probability of every emotion (columns), the unsteered replies on top."""
    heldout = report["heldout"]
    columns = list(heldout["baseline"]["judge_mean"])
    rows = heldout["rows"]
    matrix = np.asarray([[heldout["baseline"]["judge_mean"][j] for j in columns]]
                        + [[r["judge_mean"][j] for j in columns] for r in rows.values()])
    labels = ["unsteered"] + [f"{e} @ {r['alpha']:g}" for e, r in rows.items()]
    return _matrix_plot(matrix, labels, columns, "steered emotion @ recommended alpha")


def heldout_effect(heldout: dict[str, Any]) -> Any:
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
             color=[emotion_color(k) for k in range(len(emotions))])
    left.set_xticks(x, emotions, fontsize=8)
    left.set_ylabel("judge mean P(target emotion)")
    left.set_ylim(0, 1)
    left.legend(fontsize=8, frameon=False)
    left.set_title(f"held-out effect ({heldout['n_prompts']} prompts; bars: 95% CI of the change)", fontsize=9)
    right.bar(x - 0.2, [rows[e]["ppl_median"] / base["ppl_median"] for e in emotions], 0.4,
              label="median ppl / unsteered")
    right.bar(x + 0.2, [rows[e]["degenerate"] for e in emotions], 0.4, label="degenerate share")
    right.axhline(1.0, color="grey", lw=0.8, ls=":")
    right.set_xticks(x, emotions, fontsize=8)
    right.legend(fontsize=8, frameon=False)
    right.set_title(f"fluency cost (unsteered degenerate share {base['degenerate']:.2f})", fontsize=9)
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


EVAL_FIGURES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "effect_curves": effect_curves, "fluency": fluency_curves, "confusion": confusion_heatmap}
HELDOUT_FIGURES: dict[str, Callable[[dict[str, Any]], Any]] = {  # of a tune report (its "heldout" stage)
    "heldout-effect": lambda report: heldout_effect(report["heldout"]), "heldout-confusion": heldout_confusion}


def write_figures(report: dict[str, Any], makers: Mapping[str, Callable[[dict[str, Any]], Any]], folder: str | Path,
                  prefix: str = "") -> dict[str, str]:
    """Each figure of ``makers`` as ``folder/<prefix><name>.png`` (100 dpi); ``{name: file name}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for name, make in makers.items():
        fig = make(report)
        fig.savefig(folder / f"{prefix}{name}.png", dpi=100)
        names[name] = f"{prefix}{name}.png"
    return names
