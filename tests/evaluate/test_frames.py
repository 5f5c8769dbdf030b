"""The eval and tune reports as DataFrames: built from a saved report.json they hold the JSON's numbers,
unchanged, and the Markdown written from them is the Markdown of the report in memory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from report_samples import eval_report, tune_report  # tests/ is on the path

from emolab.evaluate.report import eval_frame, markdown_tables, save_report
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
    # the Markdown is written from the frame: the same text from memory, from report.json and in tables.md,
    # which links the three plots written beside it
    figures = {name: f"{name}.png" for name in ("effect_curves", "fluency", "confusion")}
    assert markdown_tables(saved, figures) == markdown_tables(report, figures) == (tmp_path / "tables.md").read_text()
    assert all((tmp_path / file).stat().st_size > 1000 for file in figures.values())
    assert [f"![{n.replace('_', ' ')}]({f})" in markdown_tables(report, figures) for n, f in figures.items()] == [True] * 3


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
    # the Markdown is written from the frames: the same text from memory and from report.json, with the held-out
    # plots written beside tables.md and linked after the held-out table
    figures = {"heldout-effect": "heldout-effect.png", "heldout-confusion": "heldout-confusion.png"}
    assert tune_markdown(saved, figures) == tune_markdown(report, figures) == (tmp_path / "tables.md").read_text()
    assert all((tmp_path / file).stat().st_size > 1000 for file in figures.values())
    text = tune_markdown(report, figures)
    assert text.index("![heldout effect](heldout-effect.png)") < text.index("### Three held-out examples")


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
