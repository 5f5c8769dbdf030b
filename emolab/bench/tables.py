"""The tables of ``emolab bench``: medians over repeats, ratios taken side by side in one run."""

from __future__ import annotations

from typing import Any

import numpy as np

from emolab.bench.load import BASELINE, SCENARIOS, RunResult

__all__ = ["print_table", "summarize_runs"]


def summarize_runs(results: list[RunResult]) -> list[dict[str, Any]]:
    """Median over repeats per (label, scenario, N), with the ratio to ``none`` of the same label and N."""
    groups: dict[tuple, list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.label, r.scenario, r.agents), []).append(r)
    rows = []
    for (label, scenario, agents), runs in groups.items():
        row = {"label": label, "scenario": scenario, "agents": agents, "repeats": len(runs),
               "tok_per_s": float(np.median([r.tok_per_s for r in runs])),
               "per_agent_tok_per_s": float(np.median([r.per_agent_tok_per_s for r in runs])),
               "ttft_p50_ms": float(np.median([r.ttft_p50_ms for r in runs])),
               "ttft_p99_ms": float(np.median([r.ttft_p99_ms for r in runs])),
               "itl_p50_ms": float(np.median([r.itl_p50_ms for r in runs])),
               "itl_p99_ms": float(np.median([r.itl_p99_ms for r in runs])),
               "errors": sum(r.errors for r in runs),
               "prompt_tokens_mean": float(np.mean([r.prompt_tokens_mean for r in runs]))}
        rows.append(row)
    base = {(r["label"], r["scenario"], r["agents"]): r["tok_per_s"] for r in rows}
    for row in rows:
        own = base.get((row["label"], BASELINE[row["scenario"]], row["agents"]))
        plain = base.get(("plain-vllm", "none", row["agents"]))
        row["ratio_vs_unsteered"] = row["tok_per_s"] / own if own else None
        row["ratio_vs_plain_vllm"] = row["tok_per_s"] / plain if plain and row["scenario"] in ("none", "same", "mixed") else None
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="emolab bench (median over repeats)")
    for col in ("server", "scenario", "N", "tok/s", "ratio", "vs plain", "per agent", "TTFT p50/p99 ms",
                "ITL p50/p99 ms", "err"):
        table.add_column(col, justify="right")
    for r in sorted(rows, key=lambda r: (r["label"], r["agents"], SCENARIOS.index(r["scenario"]))):
        ratio, plain = r["ratio_vs_unsteered"], r["ratio_vs_plain_vllm"]
        table.add_row(r["label"], r["scenario"], str(r["agents"]), f"{r['tok_per_s']:.1f}",
                      "" if ratio is None else f"{ratio:.3f}", "" if plain is None else f"{plain:.3f}",
                      f"{r['per_agent_tok_per_s']:.1f}",
                      f"{r['ttft_p50_ms']:.0f}/{r['ttft_p99_ms']:.0f}", f"{r['itl_p50_ms']:.1f}/{r['itl_p99_ms']:.1f}",
                      str(r["errors"]))
    Console().print(table)
