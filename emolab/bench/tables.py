"""The tables of ``emolab bench``: medians over repeats, ratios taken side by side in one run.

``bench_frame(results)`` is the summary as a DataFrame; the JSON's ``summary`` (``summarize_runs``) and the
printed table (``print_table``) are both written from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from emolab.bench.load import BASELINE, SCENARIOS, RunResult, repeat_spread
from emolab.core.tables import json_records

__all__ = ["SUMMARY_COLUMNS", "bench_frame", "print_table", "summarize_runs"]

SUMMARY_COLUMNS = ["label", "scenario", "agents", "repeats", "tok_per_s", "per_agent_tok_per_s", "ttft_p50_ms",
                   "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "errors", "prompt_tokens_mean", "ratio_vs_unsteered",
                   "ratio_vs_plain_vllm", "spread", "ratio_low", "ratio_high"]
# NaN: no ratio or spread (null in the JSON)
_RATIOS = ("ratio_vs_unsteered", "ratio_vs_plain_vllm", "spread", "ratio_low", "ratio_high")


def bench_frame(results: list[RunResult]) -> pd.DataFrame:
    """One row per (label, scenario, N), in the order first run: medians over repeats and the ratios.

    ``ratio_vs_unsteered``: against the unsteered scenario of the same label and N (``none``; churn's is
    ``churn-none``); ``ratio_vs_plain_vllm``: against plain vLLM's ``none`` at the same N, for ``none``,
    ``same`` and ``mixed``. A ratio that cannot be taken is NaN. How far to trust a ratio: ``spread`` is how far
    this row's repeats lie apart ((max - min) / median of tok/s), ``ratio_low`` / ``ratio_high`` the lowest and
    highest ratio to the unsteered run of the same repeat (runs pair by repeat: the k-th run of each row is
    repeat k); NaN with one repeat.
    """
    groups: dict[tuple, list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.label, r.scenario, r.agents), []).append(r)
    rows = []
    for (label, scenario, agents), runs in groups.items():
        rows.append({"label": label, "scenario": scenario, "agents": agents, "repeats": len(runs),
                     "tok_per_s": float(np.median([r.tok_per_s for r in runs])),
                     "per_agent_tok_per_s": float(np.median([r.per_agent_tok_per_s for r in runs])),
                     "ttft_p50_ms": float(np.median([r.ttft_p50_ms for r in runs])),
                     "ttft_p99_ms": float(np.median([r.ttft_p99_ms for r in runs])),
                     "itl_p50_ms": float(np.median([r.itl_p50_ms for r in runs])),
                     "itl_p99_ms": float(np.median([r.itl_p99_ms for r in runs])),
                     "errors": sum(r.errors for r in runs),
                     "prompt_tokens_mean": float(np.mean([r.prompt_tokens_mean for r in runs]))})
    base = {(r["label"], r["scenario"], r["agents"]): r["tok_per_s"] for r in rows}
    for row in rows:
        key = (row["label"], row["scenario"], row["agents"])
        own_runs = groups.get((row["label"], BASELINE[row["scenario"]], row["agents"]), [])
        rates = [r.tok_per_s for r in groups[key]]
        paired = [r.tok_per_s / b.tok_per_s for r, b in zip(groups[key], own_runs, strict=False) if b.tok_per_s > 0]  # one run per repeat each
        spread = repeat_spread(rates)
        row["spread"] = float("nan") if spread is None else spread
        row["ratio_low"], row["ratio_high"] = (min(paired), max(paired)) if len(paired) > 1 else (float("nan"),) * 2
        own = base.get((row["label"], BASELINE[row["scenario"]], row["agents"]))
        plain = base.get(("plain-vllm", "none", row["agents"]))
        row["ratio_vs_unsteered"] = row["tok_per_s"] / own if own else float("nan")
        comparable = row["scenario"] in ("none", "same", "mixed", "mixed-null")
        row["ratio_vs_plain_vllm"] = row["tok_per_s"] / plain if plain and comparable else float("nan")
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def summarize_runs(results: list[RunResult] | pd.DataFrame) -> list[dict[str, Any]]:
    """The JSON's ``summary``: the rows of ``bench_frame`` (given, or built from ``results``), ratios None where NaN."""
    frame = results if isinstance(results, pd.DataFrame) else bench_frame(results)
    return json_records(frame, optional=_RATIOS)


def print_table(summary: pd.DataFrame | list[dict[str, Any]], not_a_measurement: list[dict[str, Any]] = ()) -> None:
    """The summary (``bench_frame``, or the JSON's ``summary`` rows) as a table on the console.

    ``not_a_measurement`` (the JSON's list: label, scenario, agents, why): those rows show why ("too short",
    "client-bound") in place of their ratio, and "-" in place of a ratio to plain vLLM over such a row."""
    from rich.console import Console
    from rich.table import Table

    frame = summary if isinstance(summary, pd.DataFrame) else pd.DataFrame(summary, columns=SUMMARY_COLUMNS)
    marks = {(m["label"], m["scenario"], int(m["agents"])): m["why"].removeprefix("not a measurement: ")
             for m in not_a_measurement}
    table = Table(title="emolab bench (median over repeats)",
                  caption="too short / client-bound / -: not a measurement, no ratio shown" if marks else None)
    for col in ("server", "scenario", "N", "tok/s", "ratio (per repeat)", "vs plain", "per agent", "TTFT p50/p99 ms",
                "ITL p50/p99 ms", "err"):
        table.add_column(col, justify="right")
    order = frame.assign(_scenario=frame["scenario"].map(SCENARIOS.index))
    order = order.sort_values(["label", "agents", "_scenario"], kind="stable")
    for _, r in order.iterrows():
        ratio, plain = r["ratio_vs_unsteered"], r["ratio_vs_plain_vllm"]
        why = marks.get((r["label"], r["scenario"], int(r["agents"])))
        plain_why = why or marks.get(("plain-vllm", "none", int(r["agents"])))
        low, high, spread = (r.get(k, float("nan")) for k in ("ratio_low", "ratio_high", "spread"))
        if r["scenario"] == BASELINE[r["scenario"]]:  # the baseline: how far its own repeats lie apart
            repeats = "" if pd.isna(spread) else f" (spread {spread:.1%})"
        else:
            repeats = "" if pd.isna(low) else f" ({low:.3f}–{high:.3f})"
        table.add_row(r["label"], r["scenario"], str(r["agents"]), f"{r['tok_per_s']:.1f}",
                      why or ("" if pd.isna(ratio) else f"{ratio:.3f}{repeats}"),
                      "" if pd.isna(plain) else ("-" if plain_why else f"{plain:.3f}"),
                      f"{r['per_agent_tok_per_s']:.1f}",
                      f"{r['ttft_p50_ms']:.0f}/{r['ttft_p99_ms']:.0f}", f"{r['itl_p50_ms']:.1f}/{r['itl_p99_ms']:.1f}",
                      str(r["errors"]))
    Console().print(table)
