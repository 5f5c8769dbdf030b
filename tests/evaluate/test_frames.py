"""The eval and tune reports as DataFrames: built from a saved report.json they hold the JSON's numbers,
unchanged, and the Markdown written from them is the Markdown of the report in memory."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from emolab.evaluate.report import eval_frame, markdown_tables, save_report, summarize_conditions
from emolab.evaluate.selection import Limits, score_of
from emolab.evaluate.tune_bundle import goal_checks
from emolab.evaluate.tune_report import (
    demo_frame,
    heldout_frame,
    reach_frame,
    save_tune_report,
    stage_frame,
    tune_frames,
    tune_markdown,
)

JUDGE_EMOTIONS = ["anger", "joy", "sadness", "neutral"]


def eval_report() -> dict:
    """A report of ``summarize_conditions`` on made-up judge probabilities, perplexities and texts."""
    from emolab.evaluate.sweep import EvalConfig

    rng = np.random.default_rng(3)
    n = 12
    config = EvalConfig(emotions=["anger", "joy"], alphas=[1.0, 2.0, 4.0], prompts=[f"p{i}" for i in range(n)])
    judge = SimpleNamespace(emotions=JUDGE_EMOTIONS, test_auc={"macro": 0.91}, info={"kind": "made up"})

    def result(emotion, alpha):
        proba = rng.dirichlet(np.ones(len(JUDGE_EMOTIONS)), size=n)
        if emotion is not None:
            proba[:, JUDGE_EMOTIONS.index(emotion)] += 0.1 * alpha
            proba /= proba.sum(axis=1, keepdims=True)
        return {"emotion": emotion, "alpha": alpha, "judge": proba.tolist(),
                "texts": [" ".join(rng.choice(["a", "b", "c", "!"], size=6)) for _ in range(n)],
                "perplexity": (5 + alpha * rng.random(n) * 3).tolist(),
                "degenerate": (rng.random(n) < 0.05 * alpha).tolist(), "distinct_1": rng.random(n).tolist(),
                "distinct_2": rng.random(n).tolist(), "n_tokens": rng.integers(10, 40, n).tolist()}

    results = [result(None, 0.0)] + [result(e, a) for e in config.emotions for a in config.alphas]
    report = summarize_conditions(results, judge, config.emotions, config.alphas, config)
    report["scale"] = "normalized"
    return report


def test_eval_frame_equals_the_saved_report(tmp_path):
    report = eval_report()
    save_report(report, tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    frame = eval_frame(saved)
    assert isinstance(frame, pd.DataFrame) and len(frame) == 2 * 3
    curves = [(e, c) for e, info in saved["per_emotion"].items() for c in info["curve"]]
    assert frame["emotion"].tolist() == [e for e, _ in curves]
    for key in ("alpha", "target", "target_delta", "hit_rate", "perplexity_median", "distinct_1", "distinct_2",
                "distinct_2_pooled", "degenerate_rate", "mean_tokens"):
        assert frame[key].tolist() == [c[key] for _, c in curves], key
    assert frame["target_delta_low"].tolist() == [c["target_delta_ci95"][0] for _, c in curves]
    assert frame["target_delta_high"].tolist() == [c["target_delta_ci95"][1] for _, c in curves]
    recommended = {e: info["recommended_alpha"] for e, info in saved["per_emotion"].items()}
    assert frame["recommended"].tolist() == [c["alpha"] == recommended[e] for e, c in curves]
    for (_, c), off, delta in zip(curves, frame["off_target"], frame["off_target_delta"], strict=True):
        assert c["off_target_delta"][off] == delta == max(c["off_target_delta"].values(), key=abs)
    # the Markdown is written from the frame: the same text from memory, from report.json and in tables.md
    assert markdown_tables(saved) == markdown_tables(report) == (tmp_path / "tables.md").read_text()


def test_eval_markdown_rows_are_the_frame():
    report = eval_report()
    frame = eval_frame(report)
    rows = [line for line in markdown_tables(report).splitlines() if line.startswith(("| anger", "| joy"))]
    assert len(rows) == len(frame)
    for line, row in zip(rows, frame.itertuples(), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == f"{row.alpha:g}" + (" **(rec.)**" if row.recommended else "")
        assert cells[2] == f"{row.target:.3f}" and cells[4] == f"{row.hit_rate:.2f}"
        assert cells[3] == f"{row.target_delta:+.3f} [{row.target_delta_low:+.3f}, {row.target_delta_high:+.3f}]"
        assert cells[5] == f"{row.off_target} {row.off_target_delta:+.3f}"
        assert cells[6:] == [f"{row.perplexity_median:.1f}", f"{row.distinct_2:.2f}", f"{row.distinct_2_pooled:.2f}",
                             f"{row.degenerate_rate:.2f}"]


def test_an_eval_report_of_no_emotion():
    report = {**eval_report(), "per_emotion": {}}
    assert eval_frame(report).empty and list(eval_frame(report).columns)[:2] == ["emotion", "alpha"]
    assert markdown_tables(report).endswith("| degenerate |\n|---|---:|---:|---|---:|---|---:|---:|---:|---:|\n")


# ------------------------------------------------------------------------------------------ tune
def _row(rng, emotion, alpha, candidate, layers=(3, 4, 5)):
    delta = float(rng.uniform(-0.05, 0.5))
    return {"emotion": emotion, "source": "meandiff-mean", "layers": list(layers), "alpha": alpha,
            "candidate": candidate, "push": alpha * len(layers), "n": 8, "delta": delta,
            "delta_ci95": [delta - 0.07, delta + 0.06], "hit_rate": float(rng.uniform(0, 1)),
            "ppl_median": float(rng.uniform(2, 6)), "degenerate": float(rng.choice([0, 0.125, 0.25])),
            "question": float(rng.choice([0, 0.125]))}


def tune_report() -> dict:
    """A tune report's shape (search, confirm, held-out, demo), with made-up numbers."""
    rng = np.random.default_rng(5)
    emotions = ["anger", "joy", "surprise"]
    base = {"n": 8, "ppl_median": 2.5, "degenerate": 0.0, "question": 0.125, "argmax_counts": {"joy": 3, "anger": 5}}
    timings = {"generate_s": 3.0, "tok_per_s": 100.0, "perplexity_s": 1.0, "judge_s": 2.0}

    def stage(n_prompts):
        rows = [_row(rng, e, a, k, layers) for e in emotions for k, layers in enumerate([(3, 4, 5), (6,)])
                for a in (0.2, 0.4, 0.8)]
        return {"baseline": dict(base), "rows": rows, "n_prompts": n_prompts, "timings": timings}

    rows = {}
    for emotion in emotions:
        row = _row(rng, emotion, 0.4, 0)
        row.update(recipe={"source": "meandiff-mean"}, checks=goal_checks(row, base, Limits()),
                   examples=[{"prompt": "hi", "baseline": "b", "steered": "s", "p_target_baseline": 0.1,
                              "p_target_steered": 0.6}])
        rows[emotion] = row
    heldout = {"n_prompts": 8, "baseline": dict(base), "rows": rows,
               "demo": [{"steering": "none", "reply": "a | b", "judge_top": "neutral", "judge_top_p": 0.7},
                        {"steering": "joy 0.4", "reply": "yay", "judge_top": "joy", "judge_top_p": 0.9}],
               "mean_delta": float(np.mean([r["delta"] for r in rows.values()])), "timings": {"vllm_tok_per_s": 1e3}}
    config = {"variants": ["plain"], "windows": "3-5,6", "pushes": [0.6, 1.2], "search_prompts": 8, "confirm_top": 2,
              "max_new_tokens": 16, "backend": "hf", "limits": Limits().as_dict()}
    return {"config": config, "emotions": emotions, "n_candidates": 2, "search": stage(8), "confirm": stage(16),
            "heldout": heldout, "timings": {"total_s": 600.0, "search": timings, "confirm": timings,
                                            "heldout": heldout["timings"]}}


def _layers(layers: list[int]) -> str:
    return "-".join(map(str, (layers[0], layers[-1]))) if len(layers) > 1 else str(layers[0])


def test_tune_frames_equal_the_saved_report(tmp_path):
    report = tune_report()
    save_tune_report(report, tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    frames = tune_frames(saved)
    assert sorted(frames) == ["confirm", "demo", "heldout", "reach", "search"]
    for name in ("search", "confirm"):
        frame, rows = frames[name], saved[name]["rows"]
        assert frame.equals(stage_frame(saved[name]))
        assert frame["emotion"].tolist() == [r["emotion"] for r in rows]
        assert frame["layers"].tolist() == [_layers(r["layers"]) for r in rows]
        for key in ("alpha", "delta", "hit_rate", "ppl_median", "degenerate", "question"):
            assert frame[key].tolist() == [r[key] for r in rows], (name, key)
        assert frame[["delta_low", "delta_high"]].to_numpy().tolist() == [r["delta_ci95"] for r in rows]
        assert frame["score"].tolist() == [score_of(r) for r in rows]
    held, rows = frames["heldout"], saved["heldout"]["rows"]
    assert held.index.tolist() == list(rows)
    assert held["source"].tolist() == [r["recipe"]["source"] for r in rows.values()]
    for key in ("alpha", "delta", "hit_rate", "ppl_median", "degenerate", "question"):
        assert held[key].tolist() == [r[key] for r in rows.values()], key
    base = saved["heldout"]["baseline"]["ppl_median"]
    assert held["ppl_ratio"].tolist() == [r["ppl_median"] / base for r in rows.values()]
    for check in ("delta", "hit_rate", "perplexity", "degenerate", "question"):
        assert held[f"meets_{check}"].tolist() == [r["checks"][check] for r in rows.values()]
    assert held["goal_met"].tolist() == [all(r["checks"].values()) for r in rows.values()]
    assert float(np.mean(held["delta"].to_numpy())) == saved["heldout"]["mean_delta"]
    assert frames["demo"].to_dict("records") == saved["heldout"]["demo"]
    # the Markdown is written from the frames: the same text from memory and from report.json
    assert tune_markdown(saved) == tune_markdown(report) == (tmp_path / "tables.md").read_text()


def test_reach_frame_counts_the_stage():
    report = tune_report()
    stage, limits = report["search"], Limits(**report["config"]["limits"])
    frame = reach_frame(stage, limits)
    base = stage["baseline"]
    for emotion, row in frame.iterrows():
        rows = [r for r in stage["rows"] if r["emotion"] == emotion]
        effect = [r for r in rows if goal_checks(r, base, limits)["delta"] and goal_checks(r, base, limits)["hit_rate"]]
        fluent = [r for r in rows if limits.within(r, base)]
        assert (row["conditions"], row["meet_effect"], row["inside_limits"]) == (len(rows), len(effect), len(fluent))
        best = max(fluent, key=score_of, default=None)
        assert (np.isnan(row["best_delta"]) if best is None else row["best_delta"] == best["delta"])
        assert row["top_hit_rate"] == max(r["hit_rate"] for r in rows)


def test_a_tune_evaluation_only_has_the_heldout_frames():
    report = tune_report()
    del report["search"], report["confirm"]
    assert sorted(tune_frames(report)) == ["demo", "heldout"]
    assert demo_frame(report["heldout"])["judge_top_p"].tolist() == [0.7, 0.9]
    empty = heldout_frame({**report["heldout"], "rows": {}})
    assert empty.empty and "delta" in empty.columns


@pytest.mark.parametrize("top", [1, 3])
def test_search_table_rows_are_the_best_of_the_frame(top):
    from emolab.evaluate.tune_report import search_table

    stage = tune_report()["confirm"]
    frame = stage_frame(stage)
    lines = [line for line in search_table(stage, top=top).splitlines() if line.startswith("| ")][1:]
    want = [r for e in frame["emotion"].unique()
            for r in frame[frame["emotion"] == e].sort_values("score", ascending=False).head(top).itertuples()]
    assert len(lines) == len(want)
    for line, row in zip(lines, want, strict=True):
        assert line.startswith(f"| {row.emotion} | {row.source} | {row.layers} | {row.alpha:g} | {row.delta:+.3f} [")
