"""emolab tune: candidates and the grid bundle by hand, the selection rule, never writing tracked files,
and a smoke run on SmolLM2 (a tiny grid through the default backend: vLLM when installed)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from markdown_links import linked_images, missing_images

from emolab.core.bundle import EmotionBundle
from emolab.core.tracked import TrackedPathError, refuse_tracked, tracked_files
from emolab.evaluate.candidates import (
    TuneError,
    build_candidates,
    format_layers,
    grid_bundle,
    parse_windows,
    source_name,
    variant_directions,
)
from emolab.evaluate.report import write_recommendations
from emolab.evaluate.selection import Limits, choose
from emolab.evaluate.tune_report import reach_table

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ candidates
def test_windows_parse_and_print():
    assert parse_windows("12-14, 13;10-11") == [(12, 13, 14), (13,), (10, 11)]
    assert [format_layers(w) for w in parse_windows("12-14,13")] == ["12-14", "13"]
    assert format_layers([3, 5]) == "3,5"
    for bad in ("14-12", "a-b", ""):
        with pytest.raises(TuneError) as info:
            parse_windows(bad)
        assert info.value.setting == "windows"


def test_variant_directions_by_hand():
    sweep = np.array([[[3.0, 0.0]], [[0.0, 2.0]]])  # anger (3, 0), joy (0, 2): one layer
    names = ["anger", "joy"]
    np.testing.assert_array_equal(variant_directions(sweep, 0, "plain", names), [[3.0, 0.0]])
    np.testing.assert_allclose(variant_directions(sweep, 0, "minus-joy-0.5", names), [[1.0, -0.5]])
    assert variant_directions(sweep, 1, "minus-joy-0.5", names) is None  # joy minus itself: skipped
    with pytest.raises(TuneError, match="names 'fear'"):
        variant_directions(sweep, 0, "minus-fear-1", names)
    with pytest.raises(TuneError, match="unknown variant"):
        variant_directions(sweep, 0, "plus-joy", names)


def _source(tmp_path: Path | None = None) -> EmotionBundle:
    sweep = {"anger": np.array([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32),
             "joy": np.array([[0.0, 2.0], [2.0, 0.0], [0.0, -1.0]], dtype=np.float32)}
    meta = {"model": "toy", "num_layers": 4, "hidden": 2, "search_layers": [1, 2, 3], "residual_norm": [10.0, 20.0, 40.0]}
    return EmotionBundle(emotions=["anger", "joy"], chosen_layers=[1], vectors={e: v[:1] for e, v in sweep.items()},
                         metadata=meta, full_sweep=sweep)


def test_candidates_are_normalized_per_layer_and_fill_a_grid_bundle(tmp_path):
    cands = build_candidates({"meandiff-last": _source()}, ["anger", "joy"], [(1, 2), (3,)], ["plain", "minus-joy-1"])
    assert [c.key for c in cands] == ["anger|meandiff-last|1-2", "anger|meandiff-last|3",
                                      "anger|meandiff-last/minus-joy-1|1-2", "anger|meandiff-last/minus-joy-1|3",
                                      "joy|meandiff-last|1-2", "joy|meandiff-last|3"]
    np.testing.assert_allclose(cands[0].vectors, [[0.6, 0.8], [0.0, 2.0]], atol=1e-6)  # 0.1 x 10 and 0.1 x 20
    np.testing.assert_allclose(cands[3].vectors, [[4 * np.sqrt(0.5), 4 * np.sqrt(0.5)]], atol=1e-6)  # (1,0)-(0,-1), 0.1 x 40
    grid = grid_bundle(cands, "toy", 4)
    assert grid.chosen_layers == [1, 2, 3] and grid.emotions == [f"c{i}" for i in range(6)]
    np.testing.assert_array_equal(grid.vectors["c1"][:2], 0.0)  # candidate 1 steers layer 3 only
    loaded = EmotionBundle.load(grid.save(tmp_path / "grid"))
    assert loaded.layers_of("c1") == [3] and loaded.alpha_scale == "raw"
    np.testing.assert_allclose(loaded.steering_basis()[:, 0], [[0.6, 0.8], [0.0, 2.0], [0.0, 0.0]], atol=1e-6)


def test_candidates_need_a_sweep_covering_the_windows():
    source = _source()
    with pytest.raises(TuneError, match=r"layers \[0\]"):
        build_candidates({"s": source}, ["anger"], [(0, 1)], ["plain"])
    source.full_sweep = None
    with pytest.raises(TuneError, match="no full sweep"):
        build_candidates({"s": source}, ["anger"], [(1,)], ["plain"])
    assert source_name({}) == "meandiff-last"
    assert source_name({"method": "contrastive", "positions": "mean", "pca": True, "against": "others"}) == \
        "contrastive-mean-pca-others"
    assert source_name({"method": "meandiff", "positions": "mean", "labels": "core"}) == "meandiff-mean-core"
    assert source_name({"method": "meandiff", "positions": "last", "labels": "group"}) == "meandiff-last"


def test_choose_by_hand():
    base = {"ppl_median": 2.0, "degenerate": 0.0, "question": 0.0}
    rows = [
        {"emotion": "surprise", "alpha": 1.0, "delta": 0.10, "hit_rate": 0.2, "ppl_median": 3.0, "degenerate": 0.0,
         "question": 0.0},
        {"emotion": "surprise", "alpha": 2.0, "delta": 0.30, "hit_rate": 0.6, "ppl_median": 4.5, "degenerate": 0.0,
         "question": 0.0},  # perplexity past 2 x 2
        {"emotion": "surprise", "alpha": 1.5, "delta": 0.25, "hit_rate": 0.5, "ppl_median": 3.5, "degenerate": 0.05,
         "question": 0.3},  # too many questions
    ]
    assert choose(rows, base, Limits())["alpha"] == 1.0
    assert choose(rows, base, Limits(question_tolerance=0.4))["alpha"] == 1.5
    # Nothing inside the limits: the one that breaks them least (4.5 / 4 - 1 = 0.125 < 0.3 / 0.1 excess questions).
    assert choose(rows[1:], base, Limits())["alpha"] == 2.0
    assert choose([], base, Limits()) is None


def _cond(emotion: str, alpha: float, delta: float, hit: float, ppl: float, degenerate: float) -> dict:
    return {"emotion": emotion, "source": "meandiff-mean", "layers": [3, 4, 5], "alpha": alpha, "delta": delta,
            "delta_ci95": [delta - 0.05, delta + 0.05], "hit_rate": hit, "ppl_median": ppl,
            "degenerate": degenerate, "question": 0.0}


def test_reach_table_by_hand():
    stage = {"baseline": {"ppl_median": 2.0, "degenerate": 0.0, "question": 0.0}, "rows": [
        _cond("anger", 0.2, 0.10, 0.20, 3.0, 0.00),  # fluent, too weak
        _cond("anger", 0.3, 0.20, 0.45, 4.4, 0.15),  # effect lines met; 0.1 past 4.0 and 0.5 past the loop line
        _cond("anger", 0.4, 0.30, 0.60, 4.2, 0.30),  # effect lines met; 0.05 + 2.0 past
        _cond("joy", 0.2, 0.40, 0.90, 3.5, 0.05),    # both
        _cond("joy", 0.3, 0.50, 0.95, 5.0, 0.05),    # effect only
        _cond("fear", 0.2, 0.04, 0.10, 2.5, 0.00),   # fluent only
        _cond("fear", 0.3, 0.12, 0.35, 5.0, 0.20),   # neither: the highest hit rate is reported
    ]}
    lines = reach_table(stage, Limits()).splitlines()[2:]
    assert lines == [
        "| anger | 3 | 2 | 1 | 0 | +0.100, 0.20 | meandiff-mean 3-5 @ 0.3: 2.20x, 0.150 |",
        "| joy | 2 | 2 | 1 | 1 | +0.400, 0.90 | meandiff-mean 3-5 @ 0.2: 1.75x, 0.050 |",
        "| fear | 2 | 0 | 1 | 0 | +0.040, 0.10 | none; highest hit rate 0.35 (Δ +0.120) at meandiff-mean 3-5 @ 0.3 |",
    ]


# ------------------------------------------------------------------ no writes into tracked files
def _git_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "vectors" / "b").mkdir(parents=True)
    (repo / "vectors" / "b" / "metadata.json").write_text("{}")
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, capture_output=True)
    return repo


def test_refuse_tracked_on_a_throwaway_repo(tmp_path):
    repo = _git_repo(tmp_path)
    assert tracked_files(repo / "vectors" / "b") == ["vectors/b/metadata.json"]
    with pytest.raises(TrackedPathError, match="tracks") as info:
        refuse_tracked(repo / "vectors" / "b")
    assert info.value.setting == "output"
    refuse_tracked(repo / "vectors" / "new")  # a new folder in the checkout is fine
    refuse_tracked(tmp_path / "elsewhere" / "deeper")  # so is anything outside a checkout


def test_write_recommendations_refuses_a_tracked_bundle(tmp_path):
    repo = _git_repo(tmp_path)
    report = {"alpha_recommendations": {"anger": 1.0}, "scale": "normalized"}
    with pytest.raises(TrackedPathError):
        write_recommendations(repo / "vectors" / "b", report)
    assert (repo / "vectors" / "b" / "metadata.json").read_text() == "{}"


def test_the_committed_bundle_is_tracked_and_refused(smollm2_bundle_path, tmp_path):
    if not tracked_files(smollm2_bundle_path):
        pytest.skip("not a git checkout")
    from emolab.evaluate.tune import TuneConfig, run_tune
    from emolab.extraction import ExtractConfig, extract

    source = _source().save(tmp_path / "source")
    with pytest.raises(TrackedPathError):
        run_tune(TuneConfig(sources=[str(source)], output=str(smollm2_bundle_path)))
    with pytest.raises(TrackedPathError):
        extract(ExtractConfig(model="smollm2", output=str(smollm2_bundle_path)))


def test_tune_refuses_its_input_as_output(tmp_path):
    from emolab.evaluate.tune import TuneConfig, run_tune

    folder = _source().save(tmp_path / "source")
    with pytest.raises(TuneError, match="input bundle") as info:
        run_tune(TuneConfig(sources=[str(folder)], output=str(folder)))
    assert info.value.setting == "output"


# ------------------------------------------------------------------------------ smoke on SmolLM2
def test_emolab_tune_smoke_on_smollm2(tmp_path, smollm2_bundle_path):
    """Two emotions, one layer, two pushes, two prompts per stage, 8 tokens; the default backend."""
    from emolab.cli import main

    committed = EmotionBundle.load(smollm2_bundle_path)
    source = EmotionBundle(emotions=committed.emotions, chosen_layers=committed.chosen_layers,
                           vectors=committed.vectors, full_sweep=committed.vectors,
                           metadata={**{k: v for k, v in committed.metadata.items() if k != "emotion_layers"},
                                     "search_layers": committed.chosen_layers,
                                     "residual_norm": committed.residual_norms(), "auc_matrix": None})
    source.save(tmp_path / "source")
    # one layer that both fear and joy steer (a tuned bundle has zeros where an emotion does not)
    layer = min(set(committed.layers_of("fear")) & set(committed.layers_of("joy")))
    out, report = tmp_path / "tuned", tmp_path / "report"
    code = main(["tune", "--bundle", str(tmp_path / "source"), "--output", str(out), "--report", str(report),
                 "--emotions", "fear,joy", "--windows", f"{layer}", "--pushes", "1,2",
                 "--search-prompts", "2", "--confirm-top", "1", "--confirm-prompts", "2", "--heldout-prompts", "2",
                 "--max-new-tokens", "8", "--markdown", str(tmp_path / "effect.md")])
    assert code == 0
    tuned = EmotionBundle.load(out)
    assert tuned.emotions == ["fear", "joy"] and tuned.chosen_layers == [layer]
    meta = tuned.metadata
    assert meta["alpha_scale"] == meta["alpha_recommendations_scale"] == "normalized"
    assert set(meta["alpha_recommendations"]) == {"fear", "joy"}
    for emotion in ("fear", "joy"):
        recipe = meta["recipe"][emotion]
        assert recipe["method"] == "meandiff" and recipe["alpha"] == meta["alpha_recommendations"][emotion]
        assert recipe["alpha"] in (1.0, 2.0) and recipe["scale"] == "normalized"
        held = meta["steering_eval"]["per_emotion"][emotion]
        assert {"delta", "delta_ci95", "hit_rate", "ppl_median", "degenerate", "question"} <= set(held)
    # raw and normalized alphas coincide: the vectors are stored at 0.1 x residual norm
    np.testing.assert_allclose(tuned.steering_basis("raw"), tuned.steering_basis("normalized"), rtol=1e-5)
    saved = json.loads((report / "report.json").read_text())
    assert saved["heldout"]["n_prompts"] == 2 and len(saved["heldout"]["demo"]) == 3
    effect_md = (tmp_path / "effect.md").read_text()
    assert "| fear |" in effect_md and "Effect against fluency over the whole search grid" in effect_md
    assert linked_images(tmp_path / "effect.md") == ["img/steering-effect-heldout-effect.png",
                                                     "img/steering-effect-heldout-confusion.png"]
    assert missing_images(tmp_path / "effect.md") == [] and missing_images(report / "tables.md") == []
    # --evaluate reads the tuned bundle (never writes it) and reports it held-out at its recommended alphas.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["tune", "--evaluate", str(out), "--report", str(tmp_path / "effect"), "--heldout-prompts", "2",
                 "--max-new-tokens", "8"]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    again = json.loads((tmp_path / "effect" / "report.json").read_text())["heldout"]
    assert again["rows"]["fear"]["alpha"] == meta["alpha_recommendations"]["fear"]
    assert again["steering_eval"] == meta["steering_eval"]  # same bundle, prompts, backend: same numbers
