"""What a bundle holds, without loading any model: ``summary`` (data) and ``print_report`` (tables).

``emolab test BUNDLE`` prints the report; the inspection notebook and ``/v1/emotions`` read the data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emolab.core.bundle import EmotionBundle

__all__ = ["print_report", "summary"]


def summary(bundle: EmotionBundle) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able data."""
    meta = bundle.metadata
    auc = bundle.auc_matrix()
    search = bundle.search_layers
    out: dict[str, Any] = {
        "model": bundle.model,
        "emotions": bundle.emotions,
        "id_map": bundle.id_map,
        "num_layers": bundle.num_layers,
        "hidden": bundle.hidden,
        "search_layers": search,
        "chosen_layers": bundle.chosen_layers,
        "n_train": meta.get("n_train"),
        "n_val": meta.get("n_val"),
        "chosen_mean_auc": meta.get("chosen_mean_auc"),
        "norms": bundle.norms(),
        "alpha_recommendations": meta.get("alpha_recommendations"),
        # Recommendations are alphas on some scale; without a recorded scale they are raw (reference tool).
        "alpha_recommendations_scale": meta.get("alpha_recommendations_scale", "raw") if meta.get("alpha_recommendations") else None,
        "alpha_scale": meta.get("alpha_scale", "raw"),
        "validated_alpha_range": meta.get("validated_alpha_range"),
        "convention_inject": meta.get("convention_inject"),
        "has_full_sweep": bundle.full_sweep is not None,
    }
    if auc is not None:
        out["auc_matrix"] = auc.tolist()
        out["mean_auc_per_layer"] = auc.mean(axis=1).tolist()
        if out["chosen_mean_auc"] is None and len(auc) == len(search):
            rows = [search.index(layer) for layer in bundle.chosen_layers if layer in search]
            out["chosen_mean_auc"] = float(auc[rows].mean()) if rows else None
    if "families" in meta:
        out["families"] = meta["families"]
    return out


def print_report(bundle: EmotionBundle, console=None, *, norms: bool = True) -> None:
    """The bundle's summary, AUC table and (unless ``norms`` is False) its table of vector norms."""
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

    if "auc_matrix" in info:
        auc = np.asarray(info["auc_matrix"])
        table = Table(title="validation ROC-AUC per searched layer (* = chosen window)")
        table.add_column("layer", justify="right")
        for emotion in bundle.emotions:
            table.add_column(emotion, justify="right")
        table.add_column("mean", justify="right", style="bold")
        for layer, row in zip(info["search_layers"], auc, strict=True):
            mark = "*" if layer in bundle.chosen_layers else ""
            table.add_row(f"{mark}{layer}", *(f"{x:.3f}" for x in row), f"{row.mean():.3f}")
        console.print(table)

    if not norms:
        return
    table = Table(title="L2 norm of each vector at the chosen layers")
    table.add_column("emotion")
    for layer in bundle.chosen_layers:
        table.add_column(f"L{layer}", justify="right")
    for emotion, values in info["norms"].items():
        table.add_row(emotion, *(f"{x:.3f}" for x in values))
    console.print(table)
