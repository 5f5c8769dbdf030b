"""``emolab bench``'s summary as a DataFrame: the JSON's ``summary`` and the printed table are written from
``bench_frame``, and the frame of a saved bench's runs is that bench's ``summary``. No server is started."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from emolab.bench.load import RunResult
from emolab.bench.tables import SUMMARY_COLUMNS, bench_frame, print_table, summarize_runs

ROOT = Path(__file__).resolve().parents[2]
SAVED = ROOT / "docs" / "gpu" / "h100" / "bench_http.json"  # an emolab bench run on one H100


def run(label: str, scenario: str, agents: int, tok_per_s: float, **kw) -> RunResult:
    values = dict(requests=agents, errors=0, wall_s=1.0, completion_tokens=100, prompt_tokens_mean=30.0,
                  tok_per_s=tok_per_s, per_agent_tok_per_s=tok_per_s / agents, ttft_p50_ms=10.0, ttft_p99_ms=20.0,
                  itl_p50_ms=1.0, itl_p99_ms=2.0)
    values.update(kw)
    return RunResult(label=label, scenario=scenario, agents=agents, **values)


def runs() -> list[RunResult]:
    return [run("emolab", "none", 4, 100.0), run("emolab", "mixed", 4, 90.0), run("emolab", "churn-none", 4, 80.0),
            run("emolab", "churn", 4, 60.0, errors=1), run("emolab", "none", 4, 120.0), run("emolab", "mixed", 4, 96.0),
            run("plain-vllm", "none", 4, 125.0)]


def test_bench_frame_by_hand():
    frame = bench_frame(runs())
    assert frame.columns.tolist() == SUMMARY_COLUMNS
    assert list(zip(frame["label"], frame["scenario"], frame["repeats"], strict=True)) == [
        ("emolab", "none", 2), ("emolab", "mixed", 2), ("emolab", "churn-none", 1), ("emolab", "churn", 1),
        ("plain-vllm", "none", 1)]
    assert frame["tok_per_s"].tolist() == [110.0, 93.0, 80.0, 60.0, 125.0]  # medians over repeats
    assert frame["ratio_vs_unsteered"].tolist() == pytest.approx([1.0, 93 / 110, 1.0, 60 / 80, 1.0])
    plain = frame["ratio_vs_plain_vllm"].tolist()
    assert plain[:2] == pytest.approx([110 / 125, 93 / 125]) and math.isnan(plain[2]) and math.isnan(plain[3])
    assert frame["errors"].tolist() == [0, 0, 0, 1, 0]
    # how far to trust them: the repeats' spread, and the ratio of each repeat to its own unsteered run
    assert frame["spread"].tolist()[:2] == pytest.approx([20 / 110, 6 / 93])
    assert (frame["ratio_low"][1], frame["ratio_high"][1]) == pytest.approx((96 / 120, 90 / 100))
    assert all(math.isnan(frame[c][3]) for c in ("spread", "ratio_low", "ratio_high"))  # one repeat: nothing to say


def test_the_json_summary_is_the_frame():
    frame = bench_frame(runs())
    summary = summarize_runs(runs())
    assert summary == summarize_runs(frame)
    assert [list(row) for row in summary] == [SUMMARY_COLUMNS] * len(frame)
    assert summary[2]["ratio_vs_plain_vllm"] is None and json.loads(json.dumps(summary)) == summary
    back = pd.DataFrame(summary, columns=SUMMARY_COLUMNS)
    pd.testing.assert_frame_equal(back, frame)
    assert summarize_runs([]) == [] and bench_frame([]).columns.tolist() == SUMMARY_COLUMNS


def test_a_saved_bench_rebuilds_its_summary():
    saved = json.loads(SAVED.read_text())
    results = [RunResult(**r) for r in saved["runs"]]
    # the columns it was written with (spread and the per-repeat ratios came later) are the same figures
    assert [{k: row[k] for k in want} for row, want in zip(summarize_runs(results), saved["summary"], strict=True)] \
        == saved["summary"]
    frame = bench_frame(results)
    for row, want in zip(frame.to_dict("records"), saved["summary"], strict=True):
        assert {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items() if k in want} == want


def test_the_printed_table_is_the_frame(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich's width: no cell cut short
    frame = bench_frame(runs())
    print_table(frame)
    from_frame = capsys.readouterr().out
    print_table(summarize_runs(runs()))  # the CLI prints the JSON's summary: the same table
    assert capsys.readouterr().out == from_frame
    lines = [[c.strip() for c in line.strip("│").split("│")] for line in from_frame.splitlines()
             if line.startswith("│")]
    assert [line[:3] for line in lines] == [["emolab", s, "4"] for s in ("none", "mixed", "churn", "churn-none")] + [
        ["plain-vllm", "none", "4"]]  # by label, N, then the order of SCENARIOS
    assert lines[1][3:6] == ["93.0", f"{93 / 110:.3f} (0.800–0.900)", f"{93 / 125:.3f}"]  # the repeats' own ratios
    assert lines[0][4] == "1.000 (spread 18.2%)" and lines[2][4:6] == ["0.750", ""]  # a baseline: its repeats' spread
    assert lines[2][-1] == "1"


def test_run_bench_writes_the_frame(tmp_path, monkeypatch):
    import emolab.bench.run as bench_run
    from emolab.bench import BenchConfig

    monkeypatch.setattr(bench_run, "bench_server", lambda *args, **kwargs: runs())
    out = tmp_path / "bench.json"
    result = bench_run.run_bench(BenchConfig(base_url="http://127.0.0.1:9/v1", output=str(out),
                                             scenarios=["none", "mixed", "churn"]))
    saved = json.loads(out.read_text())
    assert saved["summary"] == result["summary"] == summarize_runs(bench_frame(runs()))
