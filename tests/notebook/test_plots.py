"""emolab.notebook.plots: each plot draws exactly the bundle's numbers, and nothing touches pyplot."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from emolab.core.bundle import EmotionBundle
from emolab.notebook import plots

EMOTIONS = ["anger", "joy", "sadness"]
SEARCH = [4, 5, 6, 7]
CHOSEN = [5, 6]


def hand_bundle(*, with_sweep: bool = True, with_auc: bool = True) -> EmotionBundle:
    """3 emotions, 4 searched layers, hidden 2, numbers chosen so norms and cosines are easy by hand."""
    sweep = {
        # layer rows 4..7; the chosen rows (5, 6) are rows 1 and 2
        "anger": np.array([[1, 0], [3, 4], [0, 2], [5, 0]], dtype=np.float32),
        "joy": np.array([[0, 1], [-3, -4], [0, 1], [0, 6]], dtype=np.float32),
        "sadness": np.array([[2, 2], [4, -3], [1, 0], [0, 0.5]], dtype=np.float32),
    }
    meta = {"model": "hand-made", "num_layers": 8, "search_layers": SEARCH}
    if with_auc:
        meta["auc_matrix"] = [[0.5, 0.6, 0.7], [0.9, 0.8, 0.7], [0.8, 0.8, 0.8], [0.6, 0.5, 0.55]]
    return EmotionBundle(
        emotions=EMOTIONS, chosen_layers=CHOSEN, vectors={e: sweep[e][1:3] for e in EMOTIONS},
        metadata=meta, full_sweep=sweep if with_sweep else None,
    )


def test_cosine_matrix_matches_hand_computed_values():
    bundle = hand_bundle()
    # concatenated chosen layers: anger (3,4,0,2), joy (-3,-4,0,1), sadness (4,-3,1,0)
    a, j, s = np.array([3, 4, 0, 2.0]), np.array([-3, -4, 0, 1.0]), np.array([4, -3, 1, 0.0])
    cos = lambda x, y: x @ y / np.linalg.norm(x) / np.linalg.norm(y)  # noqa: E731
    want = np.array([[1, cos(a, j), cos(a, s)], [cos(j, a), 1, cos(j, s)], [cos(s, a), cos(s, j), 1]])
    np.testing.assert_allclose(plots.cosine_matrix(bundle), want, atol=1e-12)
    # at layer 5 alone: anger (3,4) and joy (-3,-4) are exactly opposite, sadness (4,-3) is orthogonal to both
    np.testing.assert_allclose(plots.cosine_matrix(bundle, layer=5), [[1, -1, 0], [-1, 1, 0], [0, 0, 1]], atol=1e-12)
    with pytest.raises(ValueError, match="layer 4 is not a chosen layer"):
        plots.cosine_matrix(bundle, layer=4)


def test_cosine_plot_shows_the_matrix():
    bundle = hand_bundle()
    fig = plots.cosine_plot(bundle, layer=5)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), plots.cosine_matrix(bundle, layer=5))
    assert [t.get_text() for t in ax.get_xticklabels()] == EMOTIONS
    assert "-1.00" in [t.get_text() for t in ax.texts]


def test_vector_norms_use_the_full_sweep_when_present_else_the_chosen_layers():
    layers, norms = plots.vector_norms(hand_bundle())
    assert layers == SEARCH
    np.testing.assert_allclose(norms["anger"], [1, 5, 2, 5])
    np.testing.assert_allclose(norms["joy"], [1, 5, 1, 6])
    layers, norms = plots.vector_norms(hand_bundle(with_sweep=False))
    assert layers == CHOSEN
    np.testing.assert_allclose(norms["sadness"], [5, 1])


@pytest.mark.parametrize("with_sweep", [True, False])
def test_norm_plot_draws_one_line_per_emotion(with_sweep):
    bundle = hand_bundle(with_sweep=with_sweep)
    ax = plots.norm_plot(bundle).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    layers, norms = plots.vector_norms(bundle)
    for emotion in EMOTIONS:
        np.testing.assert_array_equal(lines[emotion].get_xdata(), layers)
        np.testing.assert_allclose(lines[emotion].get_ydata(), norms[emotion])


def test_auc_heatmap_marks_the_chosen_window():
    bundle = hand_bundle()
    ax = plots.auc_heatmap(bundle).axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), bundle.auc_matrix())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["4", "5", "6", "7"]
    assert [t.get_text() for t in ax.get_xticklabels()] == EMOTIONS
    (window,) = [p for p in ax.patches if p.get_label() == "chosen window"]
    # rows 1..2 (layers 5, 6) in image coordinates, across all 3 emotion columns
    assert (window.get_x(), window.get_y(), window.get_width(), window.get_height()) == (-0.5, 0.5, 3, 2)
    assert "0.90" in [t.get_text() for t in ax.texts]


def test_mean_auc_curve_plots_the_row_means():
    bundle = hand_bundle()
    ax = plots.mean_auc_curve(bundle).axes[0]
    (mean_line,) = [line for line in ax.get_lines() if line.get_label() == "mean over emotions"]
    np.testing.assert_array_equal(mean_line.get_xdata(), SEARCH)
    np.testing.assert_allclose(mean_line.get_ydata(), [0.6, 0.8, 0.8, 0.55])


def test_auc_plots_refuse_a_bundle_without_auc():
    bundle = hand_bundle(with_auc=False)
    for make in (plots.auc_heatmap, plots.mean_auc_curve):
        with pytest.raises(ValueError, match="no auc_matrix"):
            make(bundle)


def test_save_inspection_plots_writes_pngs(tmp_path):
    paths = plots.save_inspection_plots(hand_bundle(), tmp_path / "all")
    assert sorted(paths) == ["auc_heatmap", "cosine", "mean_auc", "norms"]
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    paths = plots.save_inspection_plots(hand_bundle(with_auc=False), tmp_path / "no-auc")
    assert sorted(paths) == ["cosine", "norms"]
    assert sorted(p.name for p in (tmp_path / "no-auc").iterdir()) == ["cosine.png", "norms.png"]


def test_reference_bundle_plots(reference_bundle_path, tmp_path):
    """A bundle of the reference tool: family-split AUCs folded into one heatmap, norms of the chosen layers."""
    bundle = EmotionBundle.load(reference_bundle_path)
    paths = plots.save_inspection_plots(bundle, tmp_path)
    assert sorted(paths) == ["auc_heatmap", "cosine", "mean_auc", "norms"]
    ax = plots.auc_heatmap(bundle).axes[0]
    assert ax.images[0].get_array().shape == (12, 6)
    (window,) = [p for p in ax.patches if p.get_label() == "chosen window"]
    assert (window.get_y(), window.get_height()) == (3.5, 3)  # layers 20-22 are rows 4-6 of 16..27
    assert plots.vector_norms(bundle)[0] == [20, 21, 22]


def test_committed_bundle_plots(smollm2_bundle_path, tmp_path):
    bundle = EmotionBundle.load(smollm2_bundle_path)
    paths = plots.save_inspection_plots(bundle, tmp_path)
    assert sorted(paths) == ["auc_heatmap", "cosine", "mean_auc", "norms"]
    layers, _ = plots.vector_norms(bundle)
    assert layers == (bundle.search_layers if bundle.full_sweep is not None else bundle.chosen_layers)


def test_plots_never_import_pyplot(tmp_path):
    code = (
        "import sys; from emolab.notebook import plots; from emolab.core.bundle import EmotionBundle; "
        "sys.path.insert(0, 'tests/notebook'); from test_plots import hand_bundle; "
        f"plots.save_inspection_plots(hand_bundle(), {str(tmp_path)!r}); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'; print('clean')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=plots.__file__.rsplit("/emolab/", 1)[0], env={"MPLBACKEND": "TkAgg", **_env()})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}


def test_heldout_effect_draws_the_tunes_held_out_numbers():
    from emolab.notebook.effect_plots import heldout_effect

    base = {"judge_mean": {"joy": 0.2, "fear": 0.1}, "ppl_median": 4.0, "degenerate": 0.05}
    rows = {"joy": {"target": 0.7, "delta": 0.5, "delta_ci95": [0.4, 0.6], "ppl_median": 6.0, "degenerate": 0.1},
            "fear": {"target": 0.3, "delta": 0.2, "delta_ci95": [0.1, 0.25], "ppl_median": 5.0, "degenerate": 0.0}}
    fig = heldout_effect({"rows": rows, "baseline": base, "n_prompts": 24})
    assert isinstance(fig, Figure)
    left, right = fig.axes
    heights = [round(p.get_height(), 6) for p in left.patches]
    assert heights == [0.2, 0.1, 0.7, 0.3]  # unsteered bars, then steered
    steered = next(c for c in left.containers if getattr(c, "errorbar", None) is not None)
    segments = steered.errorbar.lines[2][0].get_segments()  # the change's CI around each steered bar
    assert [(round(seg[0][1], 6), round(seg[1][1], 6)) for seg in segments] == [(0.6, 0.8), (0.2, 0.35)]
    assert [round(p.get_height(), 6) for p in right.patches] == [1.5, 1.25, 0.1, 0.0]
    assert "24 prompts" in left.get_title()
