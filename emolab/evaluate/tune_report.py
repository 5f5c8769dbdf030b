"""A tune's report as files (``report.json``, ``tables.md``) and as the Markdown of docs/steering-effect.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from emolab.evaluate.candidates import format_layers
from emolab.evaluate.selection import Limits, score_of
from emolab.evaluate.tune_bundle import GOAL, goal_checks

__all__ = ["reach_table", "save_tune_report", "search_table", "tune_markdown"]

_EFFECT = ("delta", "hit_rate")  # the goal's effect lines; the other checks are fluency


def _ci(row: dict[str, Any]) -> str:
    lo, hi = row["delta_ci95"]
    return f"{row['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _text(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def heldout_table(heldout: dict[str, Any]) -> str:
    """Per emotion: recipe, held-out delta with CI, hit rate, fluency, "?" share, goal checks."""
    base = heldout["baseline"]
    lines = [
        f"Baseline (unsteered, {heldout['n_prompts']} held-out prompts): median perplexity {base['ppl_median']:.2f} "
        f"(limit {2 * base['ppl_median']:.2f}), degenerate {base['degenerate']:.3f}, \"?\" share {base['question']:.3f}, "
        f"judge argmax counts {base['argmax_counts']}.",
        "",
        "| emotion | method | layers | alpha (normalized) | Δ target [95% CI] | hit rate | median ppl (x base) "
        "| degenerate | \"?\" share | goal met? |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for emotion, row in heldout["rows"].items():
        recipe = row["recipe"]
        failed = [k for k, ok in row["checks"].items() if not ok]
        lines.append(
            f"| {emotion} | {recipe['source']} | {format_layers(row['layers'])} | {row['alpha']:g} | {_ci(row)} | "
            f"{row['hit_rate']:.2f} | {row['ppl_median']:.2f} ({row['ppl_median'] / base['ppl_median']:.2f}x) | "
            f"{row['degenerate']:.3f} | {row['question']:.3f} | {'yes' if not failed else 'no: ' + ', '.join(failed)} |")
    lines.append(f"| **mean** | | | | **{heldout['mean_delta']:+.3f}** (goal {GOAL['mean_delta']:+.2f}) | "
                 f"{np.mean([r['hit_rate'] for r in heldout['rows'].values()]):.2f} | | | | |")
    return "\n".join(lines) + "\n"


def search_table(stage: dict[str, Any], top: int = 4) -> str:
    """The best few conditions per emotion of a tuning stage (score = Δ + 0.5 hit), with fluency."""
    base = stage["baseline"]
    lines = [f"Baseline: median perplexity {base['ppl_median']:.2f}, degenerate {base['degenerate']:.3f}, "
             f"\"?\" share {base['question']:.3f} ({stage['n_prompts']} prompts).", "",
             "| emotion | source | layers | alpha | Δ [95% CI] | hit | ppl | degenerate | \"?\" |",
             "|---|---|---|---:|---|---:|---:|---:|---:|"]
    for emotion in dict.fromkeys(r["emotion"] for r in stage["rows"]):
        rows = sorted((r for r in stage["rows"] if r["emotion"] == emotion), key=score_of, reverse=True)[:top]
        for r in rows:
            lines.append(f"| {emotion} | {r['source']} | {format_layers(r['layers'])} | {r['alpha']:g} | {_ci(r)} | "
                         f"{r['hit_rate']:.2f} | {r['ppl_median']:.2f} | {r['degenerate']:.3f} | {r['question']:.3f} |")
    return "\n".join(lines) + "\n"


def _recipe(row: dict[str, Any]) -> str:
    return f"{row['source']} {format_layers(row['layers'])} @ {row['alpha']:g}"


def reach_table(stage: dict[str, Any], limits: Limits) -> str:
    """Effect against fluency over every condition of a stage, per emotion.

    The selection shows the best condition inside the fluency limits; this shows whether the grid holds any
    condition meeting the effect lines at all, and what the cheapest of them costs in fluency, so a goal the
    grid cannot reach reads as a trade-off rather than a bad pick.
    """
    base = stage["baseline"]
    lines = ["| emotion | conditions | meet the effect lines | inside the fluency limits | both | "
             "best inside the limits: Δ, hit | effect lines at least fluency cost: recipe, ppl (x base), degenerate |",
             "|---|---:|---:|---:|---:|---|---|"]
    for emotion in dict.fromkeys(r["emotion"] for r in stage["rows"]):
        rows = [r for r in stage["rows"] if r["emotion"] == emotion]
        effect = [r for r in rows if all(goal_checks(r, base, limits)[k] for k in _EFFECT)]
        fluent = [r for r in rows if limits.within(r, base)]
        both = [r for r in effect if limits.within(r, base)]
        best = max(fluent, key=score_of, default=None)
        best_cell = f"{best['delta']:+.3f}, {best['hit_rate']:.2f}" if best else "none"
        if effect:
            cheap = min(effect, key=lambda r: (limits.excess(r, base), -score_of(r)))
            cost_cell = f"{_recipe(cheap)}: {cheap['ppl_median'] / base['ppl_median']:.2f}x, {cheap['degenerate']:.3f}"
        else:
            top = max(rows, key=lambda r: (r["hit_rate"], r["delta"]))
            cost_cell = f"none; highest hit rate {top['hit_rate']:.2f} (Δ {top['delta']:+.3f}) at {_recipe(top)}"
        lines.append(f"| {emotion} | {len(rows)} | {len(effect)} | {len(fluent)} | {len(both)} | {best_cell} | {cost_cell} |")
    return "\n".join(lines) + "\n"


def tune_markdown(report: dict[str, Any]) -> str:
    """docs/steering-effect.md: recipe, held-out numbers, examples, the demo, how the tune ran."""
    heldout = report["heldout"]
    cfg = report["config"]
    t = report["timings"]
    out = [heldout_table(heldout), "", "### Three held-out examples per emotion (greedy, same prompt)", ""]
    for emotion, row in heldout["rows"].items():
        out.append(f"**{emotion}** ({row['recipe']['source']}, layers {format_layers(row['layers'])}, "
                   f"alpha {row['alpha']:g}):\n")
        for ex in row["examples"]:
            out.append(f"- *{ex['prompt']}*\n  - baseline (P({emotion}) {ex['p_target_baseline']:.2f}): "
                       f"\"{_text(ex['baseline'])}\"\n  - steered (P({emotion}) {ex['p_target_steered']:.2f}): "
                       f"\"{_text(ex['steered'])}\"")
        out.append("")
    out += ["### The demo prompt, \"Describe your morning in two sentences.\" (recommended alphas)", "",
            "| steering | reply | judge's top emotion |", "|---|---|---|"]
    for d in heldout["demo"]:
        out.append(f"| {d['steering']} | \"{_text(d['reply'])}\" | {d['judge_top']} {d['judge_top_p']:.2f} |")
    gen = {k: v for k, v in (t.get("heldout") or {}).items() if k.endswith("tok_per_s")}
    if "search" not in report:  # an evaluation of a tuned bundle only
        out += ["", "Held-out generation throughput: " + ", ".join(f"{k.replace('_tok_per_s', '')} {v:.0f} tok/s"
                                                                     for k, v in gen.items())
                + (f" (HF and vLLM texts identical for {heldout['hf_identical_share']:.0%} of requests)"
                   if "hf_identical_share" in heldout else "") + f"; evaluation wall time {t['total_s'] / 60:.1f} min."]
        return "\n".join(out) + "\n"
    search, confirm = t["search"], t["confirm"]
    out += ["", "### How the tune ran", "",
            f"Candidates: {report['n_candidates']} (sources x variants {cfg['variants']} x windows `{cfg['windows']}`), "
            f"pushes (alpha x layers) {cfg['pushes']}; search on the first {cfg['search_prompts']} tuning prompts, "
            f"the best {cfg['confirm_top']} per emotion confirmed on all {report['confirm']['n_prompts']}; "
            f"{cfg['max_new_tokens']} new tokens, greedy, backend {cfg['backend']}.",
            "",
            f"Wall time {t['total_s'] / 60:.1f} min: search generate {search.get('generate_s', 0):.0f} s "
            f"({search.get('tok_per_s', 0):.0f} tok/s) + perplexity {search['perplexity_s']:.0f} s + judge "
            f"{search['judge_s']:.0f} s; confirm generate {confirm.get('generate_s', 0):.0f} s "
            f"({confirm.get('tok_per_s', 0):.0f} tok/s); held-out generation throughput "
            + ", ".join(f"{k.replace('_tok_per_s', '')} {v:.0f} tok/s" for k, v in gen.items())
            + (f" (HF and vLLM texts identical for {heldout['hf_identical_share']:.0%} of requests)"
               if "hf_identical_share" in heldout else "") + ".",
            "", "Best conditions of the confirm stage (tuning prompts):", "", search_table(report["confirm"], top=3),
            "", f"Effect against fluency over the whole search grid ({report['search']['n_prompts']} tuning prompts; "
            f"effect lines: Δ >= {GOAL['delta']} with the CI above 0 and hit rate >= {GOAL['hit_rate']}; fluency: "
            "the limits above, before the selection's margin):", "",
            reach_table(report["search"], Limits(**cfg["limits"]))]
    return "\n".join(out) + "\n"


def save_tune_report(report: dict[str, Any], folder: str | Path) -> Path:
    """``report.json`` (every number, no texts) and ``tables.md`` (``tune_markdown``) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    text = tune_markdown(report) if "heldout" in report else search_table(report["confirm"])
    (folder / "tables.md").write_text(text)
    return folder
