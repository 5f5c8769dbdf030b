"""The ``emolab test`` report: summary data and the rich tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from emolab.core.bundle import EmotionBundle
from emolab.core.summary import print_report, summary


def toy_bundle() -> EmotionBundle:
    vectors = {"anger": np.array([[3.0, 4.0], [0.0, 1.0]], np.float32), "joy": np.array([[1.0, 0.0], [6.0, 8.0]], np.float32)}
    return EmotionBundle(
        emotions=["anger", "joy"],
        chosen_layers=[5, 6],
        vectors=vectors,
        metadata={
            "model": "toy-model", "num_layers": 8, "search_layers": [4, 5, 6],
            "auc_matrix": [[0.5, 0.7], [0.8, 0.9], [0.6, 1.0]], "n_train": 40, "n_val": 10,
        },
    )


def test_summary_values():
    info = summary(toy_bundle())
    assert info["model"] == "toy-model"
    assert info["id_map"] == {"anger": 0, "joy": 1}
    assert (info["hidden"], info["num_layers"], info["chosen_layers"]) == (2, 8, [5, 6])
    assert (info["n_train"], info["n_val"]) == (40, 10)
    assert info["norms"] == {"anger": [5.0, 1.0], "joy": [1.0, 10.0]}
    assert info["mean_auc_per_layer"] == pytest.approx([0.6, 0.85, 0.8])
    # No chosen_mean_auc in metadata: derived from the chosen rows (layers 5, 6).
    assert info["chosen_mean_auc"] == pytest.approx((0.8 + 0.9 + 0.6 + 1.0) / 4)
    assert info["has_full_sweep"] is False
    json.dumps(info)  # JSON-able as it stands


def test_printed_report_shows_every_part():
    console = Console(record=True, width=140)
    print_report(toy_bundle(), console=console)
    text = console.export_text()
    for needle in ("toy-model", "0=anger, 1=joy", "[5, 6]", "n_train", "40", "0.8250", "*5", "*6", "0.850", "L5", "10.000"):
        assert needle in text, needle
    assert "*4" not in text


def test_reference_bundle_report(reference_bundle_path):
    bundle = EmotionBundle.load(reference_bundle_path)
    info = summary(bundle)
    assert info["n_train"] == 8865 and info["n_val"] == 2217
    assert info["families"] == ["anger_joy_sadness", "disgust_fear_surprise"]
    assert info["alpha_recommendations"]["surprise"] == 0.75
    auc = np.asarray(info["auc_matrix"])
    assert info["chosen_mean_auc"] == pytest.approx(auc[4:7].mean())  # layers 20-22 = rows 4-6 of 16..27
    console = Console(record=True, width=160)
    print_report(bundle, console=console)
    text = console.export_text()
    assert "Qwen/Qwen3-8B" in text and "contrasted within" in text and "*20" in text
