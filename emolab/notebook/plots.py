"""Plots of a bundle: AUC heatmap, mean-AUC curve, vector norms, cosine similarity between emotions.

Every function takes an ``EmotionBundle`` and returns a fresh ``matplotlib.figure.Figure`` built
without pyplot, so nothing leaks between calls, no GUI backend is touched, and the functions are
safe in servers, tests and notebooks alike (``display(fig)`` in a notebook, ``fig.savefig`` anywhere).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from emolab.core.bundle import EmotionBundle
from emolab.core.figures import EMOTION_COLORS as _COLORS
from emolab.core.figures import new_figure

__all__ = ["auc_heatmap", "circumplex_plot", "cosine_matrix", "cosine_plot", "mean_auc_curve", "new_figure",
           "norm_plot", "save_inspection_plots", "vector_norms"]

def _title(bundle: EmotionBundle, what: str) -> str:
    return f"{what} — {bundle.model or 'unknown model'}"


def _auc_or_raise(bundle: EmotionBundle) -> np.ndarray:
    auc = bundle.auc_matrix()
    if auc is None:
        raise ValueError("this bundle records no auc_matrix; AUC plots need one")
    return auc


def _auc_layers(bundle: EmotionBundle, auc: np.ndarray) -> list[int]:
    """The layer id of each AUC row: the searched layers (or the chosen ones for a chosen-only matrix)."""
    layers = bundle.search_layers
    return layers if len(layers) == len(auc) else list(bundle.chosen_layers)


def auc_heatmap(bundle: EmotionBundle) -> Figure:
    """Validation ROC-AUC as a (layer x emotion) heatmap; the chosen window is outlined."""
    auc = _auc_or_raise(bundle)
    layers = _auc_layers(bundle, auc)
    fig = new_figure(1.6 + 0.9 * len(bundle.emotions), 1.4 + 0.32 * len(layers))
    ax = fig.add_subplot()
    image = ax.imshow(auc, aspect="auto", cmap="viridis", vmin=min(0.5, float(auc.min())), vmax=1.0)
    ax.set_xticks(range(len(bundle.emotions)), bundle.emotions, rotation=30, ha="right")
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_ylabel("layer (output of block L)")
    for i in range(auc.shape[0]):
        for j in range(auc.shape[1]):
            ax.text(j, i, f"{auc[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if auc[i, j] < 0.75 else "black")
    rows = [layers.index(layer) for layer in bundle.chosen_layers if layer in layers]
    if rows:
        ax.add_patch(Rectangle((-0.5, min(rows) - 0.5), auc.shape[1], max(rows) - min(rows) + 1,
                               fill=False, edgecolor="red", linewidth=2.5, label="chosen window"))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=8, frameon=False)
    fig.colorbar(image, ax=ax, label="validation ROC-AUC")
    ax.set_title(_title(bundle, "probe AUC"), fontsize=10)
    return fig


def mean_auc_curve(bundle: EmotionBundle) -> Figure:
    """Mean validation AUC over emotions at each searched layer, with the chosen window shaded."""
    auc = _auc_or_raise(bundle)
    layers = _auc_layers(bundle, auc)
    fig = new_figure(6.0, 3.2)
    ax = fig.add_subplot()
    ax.plot(layers, auc.mean(axis=1), marker="o", color="black", label="mean over emotions")
    for j, emotion in enumerate(bundle.emotions):
        ax.plot(layers, auc[:, j], color=_COLORS[j % len(_COLORS)], alpha=0.35, linewidth=1, label=emotion)
    chosen = [layer for layer in bundle.chosen_layers if layer in layers]
    if chosen:
        ax.axvspan(min(chosen) - 0.5, max(chosen) + 0.5, color="red", alpha=0.12, label="chosen window")
    ax.set_xlabel("layer")
    ax.set_ylabel("validation ROC-AUC")
    ax.legend(fontsize=7, ncol=2, loc="best")
    ax.set_title(_title(bundle, "mean AUC per layer"), fontsize=10)
    return fig


def vector_norms(bundle: EmotionBundle) -> tuple[list[int], dict[str, np.ndarray]]:
    """L2 norm per layer for each emotion: over the full sweep when the bundle has it, else the chosen layers."""
    if bundle.full_sweep is not None:
        return bundle.search_layers, {e: np.linalg.norm(bundle.full_sweep[e], axis=1) for e in bundle.emotions}
    return list(bundle.chosen_layers), {e: np.linalg.norm(bundle.vectors[e], axis=1) for e in bundle.emotions}


def norm_plot(bundle: EmotionBundle) -> Figure:
    """Vector norm per layer and emotion (chosen layers marked)."""
    layers, norms = vector_norms(bundle)
    fig = new_figure(6.0, 3.2)
    ax = fig.add_subplot()
    for j, emotion in enumerate(bundle.emotions):
        ax.plot(layers, norms[emotion], marker="o", markersize=3, color=_COLORS[j % len(_COLORS)], label=emotion)
    if len(layers) > len(bundle.chosen_layers):
        ax.axvspan(min(bundle.chosen_layers) - 0.5, max(bundle.chosen_layers) + 0.5, color="red", alpha=0.12,
                   label="chosen window")
    ax.set_xlabel("layer" + ("" if bundle.full_sweep is not None else " (chosen layers only; no full sweep)"))
    ax.set_ylabel("L2 norm of v[e, L]")
    ax.legend(fontsize=7, ncol=2, loc="best")
    ax.set_title(_title(bundle, "vector norms"), fontsize=10)
    return fig


def cosine_matrix(bundle: EmotionBundle, layer: int | None = None) -> np.ndarray:
    """``[n_emotions, n_emotions]`` cosine similarity of the emotion vectors.

    At one chosen ``layer``, or (default) of each emotion's whole steering direction: its vectors
    at all chosen layers concatenated, which is what one alpha scales.
    """
    if layer is None:
        rows = np.stack([bundle.vectors[e].reshape(-1) for e in bundle.emotions]).astype(np.float64)
    else:
        if layer not in bundle.chosen_layers:
            raise ValueError(f"layer {layer} is not a chosen layer of this bundle ({bundle.chosen_layers})")
        rows = np.stack([bundle.vector(e, layer) for e in bundle.emotions]).astype(np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit = rows / np.where(norms == 0, 1.0, norms)
    return unit @ unit.T


def cosine_plot(bundle: EmotionBundle, layer: int | None = None) -> Figure:
    """Heatmap of :func:`cosine_matrix`."""
    cos = cosine_matrix(bundle, layer)
    n = len(bundle.emotions)
    fig = new_figure(1.8 + 0.75 * n, 1.2 + 0.7 * n)
    ax = fig.add_subplot()
    image = ax.imshow(cos, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    ax.set_xticks(range(n), bundle.emotions, rotation=30, ha="right")
    ax.set_yticks(range(n), bundle.emotions)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cos[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(cos[i, j]) > 0.6 else "black")
    fig.colorbar(image, ax=ax, label="cosine similarity")
    where = f"layer {layer}" if layer is not None else f"layers {bundle.chosen_layers} concatenated"
    ax.set_title(_title(bundle, f"cosine, {where}"), fontsize=10)
    return fig


def circumplex_plot(bundle: EmotionBundle) -> Figure:
    """Left: the emotions on the valence-arousal plane (published ratings) and where each emotion's own vector
    lies on the bundle's derived valence and arousal directions. Right: the first two principal components
    of the emotion vectors (chosen layers concatenated, centred), with the derived directions drawn in them."""
    from emolab.core.circumplex import circumplex_frame, fit_derived

    frame = circumplex_frame(bundle)
    derived = bundle.derived or fit_derived(bundle)[0]
    fig = new_figure(10.5, 4.4)
    left, right = fig.subplots(1, 2)
    for i, row in frame.iterrows():
        color = _COLORS[i % len(_COLORS)]
        left.scatter(row.valence, row.arousal, color=color, s=60, zorder=3)
        left.annotate(row.emotion, (row.valence, row.arousal), textcoords="offset points", xytext=(6, 4), fontsize=9)
        # the vector's own position, shown on the same 0-1 frame (projections -1..1 mapped to 0..1)
        x, y = (row.valence_projection + 1) / 2, (row.arousal_projection + 1) / 2
        left.scatter(x, y, facecolors="none", edgecolors=color, s=60, zorder=3)
        left.plot([row.valence, x], [row.arousal, y], color=color, linewidth=0.8, linestyle=":")
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    left.axhline(0.5, color="0.85", linewidth=0.8)
    left.axvline(0.5, color="0.85", linewidth=0.8)
    left.set_xlabel("valence")
    left.set_ylabel("arousal")
    left.set_title("circumplex: published (filled) vs the vector's projection (open)", fontsize=9)
    vectors = np.stack([bundle.vectors[e].reshape(-1) for e in bundle.emotions]).astype(np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    mean = vectors.mean(axis=0)
    _, singular, axes = np.linalg.svd(vectors - mean, full_matrices=False)
    points = (vectors - mean) @ axes[:2].T
    explained = singular[:2] ** 2 / max(float((singular**2).sum()), 1e-12)
    for i, emotion in enumerate(bundle.emotions):
        right.scatter(*points[i], color=_COLORS[i % len(_COLORS)], s=60, zorder=3)
        right.annotate(emotion, points[i], textcoords="offset points", xytext=(6, 4), fontsize=9)
    scale = float(np.abs(points).max()) or 1.0
    for name, vectors_l in derived.items():
        direction = vectors_l.reshape(-1).astype(np.float64)
        direction = direction / (np.linalg.norm(direction) or 1.0) @ axes[:2].T
        right.annotate("", xy=tuple(direction / (np.linalg.norm(direction) or 1.0) * scale), xytext=(0, 0),
                       arrowprops={"arrowstyle": "->", "color": "0.3"})
        right.annotate(name, tuple(direction / (np.linalg.norm(direction) or 1.0) * scale * 1.08), fontsize=8,
                       color="0.3")
    right.set_xlim(-1.25 * scale, 1.25 * scale)  # arrows whose tip lies outside the axes are not drawn
    right.set_ylim(-1.25 * scale, 1.25 * scale)
    right.set_xlabel(f"PC1 ({explained[0]:.0%})")
    right.set_ylabel(f"PC2 ({explained[1]:.0%})")
    right.set_title("PCA of the emotion vectors, derived axes drawn in", fontsize=9)
    fig.suptitle(_title(bundle, "valence-arousal"), fontsize=10)
    return fig


def save_inspection_plots(bundle: EmotionBundle, out_dir: str | Path) -> dict[str, Path]:
    """Write every plot the bundle supports as PNG into ``out_dir``; returns ``{name: path}``.

    AUC plots are left out (not faked) for a bundle without an AUC matrix.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    makers = {"norms": norm_plot, "cosine": cosine_plot}
    from emolab.core.circumplex import NRC_VAD

    if bundle.derived or sum(e in NRC_VAD for e in bundle.emotions) >= 3:
        makers["circumplex"] = circumplex_plot
    if bundle.auc_matrix() is not None:
        makers = {"auc_heatmap": auc_heatmap, "mean_auc": mean_auc_curve, **makers}
    paths = {}
    for name, make in makers.items():
        path = out / f"{name}.png"
        make(bundle).savefig(path)
        paths[name] = path
    return paths
