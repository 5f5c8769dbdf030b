"""The bundle's tables as DataFrames: the AUC frame and the norms frame hold the metadata's numbers, unchanged,
and ``emolab test``'s JSON and printed tables are written from them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from emolab.core.bundle import BundleError, EmotionBundle
from emolab.core.summary import print_report, summary


def toy_bundle(**meta) -> EmotionBundle:
    vectors = {"anger": np.array([[3.0, 4.0], [0.0, 1.0]], np.float32),
               "joy": np.array([[1.0, 0.0], [6.0, 8.0]], np.float32)}
    metadata = {"model": "toy-model", "num_layers": 8, "search_layers": [4, 5, 6],
                "auc_matrix": [[0.5, 0.7], [0.8, 0.9], [0.6, 1.0]], "n_train": 40, "n_val": 10, **meta}
    return EmotionBundle(emotions=["anger", "joy"], chosen_layers=[5, 6], vectors=vectors, metadata=metadata)


def test_auc_frame_by_hand():
    frame = toy_bundle().auc_frame()
    assert frame.index.name == "layer" and frame.index.tolist() == [4, 5, 6]
    assert frame.columns.tolist() == ["anger", "joy", "mean", "chosen"]
    assert frame["chosen"].tolist() == [False, True, True]
    assert frame["mean"].tolist() == pytest.approx([0.6, 0.85, 0.8])
    assert frame.loc[5, "joy"] == 0.9
    assert frame.loc[frame["chosen"], ["anger", "joy"]].to_numpy().tolist() == [[0.8, 0.9], [0.6, 1.0]]


def test_norms_frame_by_hand():
    frame = toy_bundle().norms_frame()
    assert frame.index.name == "layer" and frame.index.tolist() == [5, 6]
    assert frame.columns.tolist() == ["anger", "joy"]
    assert frame.to_numpy().tolist() == [[5.0, 1.0], [1.0, 10.0]]
    sweep = {"anger": np.array([[0.0, 2.0], [3.0, 4.0], [0.0, 1.0]], np.float32),
             "joy": np.array([[1.0, 1.0], [1.0, 0.0], [6.0, 8.0]], np.float32)}
    bundle = toy_bundle()
    bundle.full_sweep = sweep
    swept = bundle.norms_frame(sweep=True)
    assert swept.index.tolist() == [4, 5, 6] and swept["anger"].tolist() == [2.0, 5.0, 1.0]
    assert bundle.norms_frame().equals(frame)  # without sweep=True: the chosen layers


def test_no_auc_no_frame_and_mismatched_shapes_are_refused():
    assert toy_bundle(auc_matrix=None).auc_frame() is None
    assert "auc_matrix" not in summary(toy_bundle(auc_matrix=None))
    with pytest.raises(BundleError, match="shape"):
        toy_bundle(search_layers=[4, 5]).auc_frame()


def round_trip(bundle: EmotionBundle) -> None:
    """The frames hold the metadata's numbers exactly, and the JSON of ``emolab test`` is written from them."""
    auc, norms = bundle.auc_frame(), bundle.norms_frame()
    info = json.loads(json.dumps(summary(bundle)))
    assert auc[bundle.emotions].to_numpy().tolist() == bundle.metadata["auc_matrix"] == info["auc_matrix"]
    assert auc["mean"].tolist() == info["mean_auc_per_layer"]
    assert auc.index.tolist() == info["search_layers"]
    chosen = [layer for layer in info["search_layers"] if layer in info["chosen_layers"]]
    assert auc.index[auc["chosen"]].tolist() == chosen
    assert {e: norms[e].tolist() for e in norms.columns} == info["norms"] == bundle.norms()
    assert norms.index.tolist() == info["chosen_layers"]


def test_toy_round_trip():
    round_trip(toy_bundle())


def test_committed_bundle_round_trip(smollm2_bundle_path):
    bundle = EmotionBundle.load(smollm2_bundle_path)
    round_trip(bundle)
    meta = json.loads((smollm2_bundle_path / "metadata.json").read_text())
    assert bundle.auc_frame()[bundle.emotions].to_numpy().tolist() == meta["auc_matrix"]


def test_reference_bundle_round_trip(reference_bundle_path):
    round_trip(EmotionBundle.load(reference_bundle_path))  # the family-split matrices, folded into one


def test_printed_tables_are_the_frames():
    bundle = toy_bundle()
    console = Console(record=True, width=140)
    print_report(bundle, console=console)
    lines = [line.strip("│").split("│") for line in console.export_text().splitlines() if line.startswith("│")]
    rows = {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in lines}
    auc = bundle.auc_frame()
    for layer, row in auc.iterrows():
        key = f"{'*' if row['chosen'] else ''}{layer}"
        assert rows[key] == [f"{x:.3f}" for x in row[bundle.emotions]] + [f"{row['mean']:.3f}"]
    norms = bundle.norms_frame()
    for emotion in norms.columns:
        assert rows[emotion] == [f"{x:.3f}" for x in norms[emotion]]
    console = Console(record=True, width=140)
    print_report(bundle, console=console, auc=False, norms=False)
    text = console.export_text()
    assert "toy-model" in text and "ROC-AUC" not in text and "L2 norm" not in text


def test_frames_are_dataframes():
    assert isinstance(toy_bundle().auc_frame(), pd.DataFrame)
    assert isinstance(toy_bundle().norms_frame(), pd.DataFrame)
