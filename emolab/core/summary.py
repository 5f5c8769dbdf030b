"""What a bundle holds, without loading any model: ``summary`` (data) and ``print_report`` (tables).

``emolab test BUNDLE`` prints the report (``--json``: the summary); the inspection notebook reads the data.
The AUC and norm numbers of both come from the bundle's frames (``EmotionBundle.auc_frame`` and
``norms_frame``), so the printed tables and the JSON show the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emolab.core.bundle import EmotionBundle

__all__ = ["print_report", "summary"]


def summary(bundle: EmotionBundle) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able data."""
    meta = bundle.metadata
    auc = bundle.auc_frame()
    norms = bundle.norms_frame()
    out: dict[str, Any] = {
        "model": bundle.model,
        "emotions": bundle.emotions,
        "id_map": bundle.id_map,
        "num_layers": bundle.num_layers,
        "hidden": bundle.hidden,
        "search_layers": bundle.search_layers,
        "chosen_layers": bundle.chosen_layers,
        "n_train": meta.get("n_train"),
        "n_val": meta.get("n_val"),
        "chosen_mean_auc": meta.get("chosen_mean_auc"),
        "norms": {emotion: norms[emotion].tolist() for emotion in norms.columns},
        "alpha_recommendations": meta.get("alpha_recommendations"),
        # Recommendations are alphas on some scale; without a recorded scale they are raw (reference tool).
        "alpha_recommendations_scale": meta.get("alpha_recommendations_scale", "raw") if meta.get("alpha_recommendations") else None,
        "alpha_scale": meta.get("alpha_scale", "raw"),
        "validated_alpha_range": meta.get("validated_alpha_range"),
        "convention_inject": meta.get("convention_inject"),
        "has_full_sweep": bundle.full_sweep is not None,
        "steerable": bundle.steering_names,
    }
    if bundle.derived:
        from emolab.core.circumplex import circumplex_frame

        out["circumplex"] = circumplex_frame(bundle).round(4).to_dict(orient="records")
    if auc is not None:
        out["auc_matrix"] = auc[bundle.emotions].to_numpy().tolist()
        out["mean_auc_per_layer"] = auc["mean"].tolist()
        if out["chosen_mean_auc"] is None:
            rows = [layer for layer in bundle.chosen_layers if layer in auc.index]  # in the chosen layers' order
            values = np.ascontiguousarray(auc.loc[rows, bundle.emotions].to_numpy())  # row-major: summed as the matrix
            out["chosen_mean_auc"] = float(values.mean()) if rows else None
    if "families" in meta:
        out["families"] = meta["families"]
    return out


def print_report(bundle: EmotionBundle, console=None, *, norms: bool = True, auc: bool = True) -> None:
    """The bundle's summary, AUC table (unless ``auc`` is False) and table of vector norms (unless ``norms`` is)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    info = summary(bundle)
    head = Table(title="emotion bundle", show_header=False)
    head.add_column(style="bold")
    head.add_column()
    for key in ("model", "emotions", "num_layers", "hidden", "chosen_layers", "n_train", "n_val", "chosen_mean_auc"):
        value = info[key]
        if key == "emotions":
            value = ", ".join(f"{i}={e}" for i, e in enumerate(value))
        elif key == "chosen_mean_auc" and value is not None:
            value = f"{value:.4f}"
        head.add_row(key, str(value))
    if info.get("families"):
        head.add_row("families", "contrasted within: " + "; ".join(info["families"]))
    if info.get("alpha_recommendations"):
        head.add_row(f"alpha_recommendations ({info['alpha_recommendations_scale']} scale)", str(info["alpha_recommendations"]))
    console.print(head)

    frame = bundle.auc_frame() if auc else None
    if frame is not None:
        table = Table(title="validation ROC-AUC per searched layer (* = chosen window)")
        table.add_column("layer", justify="right")
        for emotion in bundle.emotions:
            table.add_column(emotion, justify="right")
        table.add_column("mean", justify="right", style="bold")
        for layer, row, mean, chosen in zip(frame.index, frame[bundle.emotions].to_numpy(), frame["mean"],
                                            frame["chosen"], strict=True):
            table.add_row(f"{'*' if chosen else ''}{layer}", *(f"{x:.3f}" for x in row), f"{mean:.3f}")
        console.print(table)

    if info.get("circumplex"):
        table = Table(title="valence-arousal: published ratings (NRC VAD) and each vector's projection on the "
                            "bundle's derived directions (steer them as 'valence' / 'arousal')")
        for column in ("emotion", "valence", "arousal", "valence_projection", "arousal_projection"):
            table.add_column(column, justify="left" if column == "emotion" else "right")
        for row in info["circumplex"]:
            table.add_row(row["emotion"], *(f"{row[k]:.3f}" for k in ("valence", "arousal", "valence_projection",
                                                                     "arousal_projection")))
        console.print(table)

    if not norms:
        return
    frame = bundle.norms_frame()
    table = Table(title="L2 norm of each vector at the chosen layers")
    table.add_column("emotion")
    for layer in frame.index:
        table.add_column(f"L{layer}", justify="right")
    for emotion in frame.columns:
        table.add_row(emotion, *(f"{x:.3f}" for x in frame[emotion]))
    console.print(table)
