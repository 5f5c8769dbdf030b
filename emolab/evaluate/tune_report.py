"""A tune's report as frames, as files (``report.json``, ``tables.md``, plots) and as the Markdown of
docs/steering-effect.md.

``tune_frames(report)`` holds its tables as DataFrames (``heldout_frame``, ``stage_frame``, ``reach_frame``,
``demo_frame``); every Markdown table here is written from one of them, and they rebuild from a saved
``report.json``. A held-out evaluation's plots (``effect_figures.HELDOUT_FIGURES``) are written beside the
Markdown that links them: ``save_tune_report`` into its folder, ``write_tune_markdown`` (docs/steering-effect.md's
generator) into ``img/`` beside its file, as ``steering-effect-<name>.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emolab.evaluate.candidates import format_layers
from emolab.evaluate.selection import Limits, score_of
from emolab.evaluate.tune_bundle import DEMO_PROMPT, GOAL, goal_checks

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DOC_FIGURE_PREFIX", "demo_frame", "heldout_frame", "heldout_table", "reach_frame", "reach_table",
           "save_tune_report", "search_table", "stage_frame", "tune_frames", "tune_markdown", "write_tune_markdown"]

DOC_FIGURE_PREFIX = "steering-effect-"  # the plots of docs/steering-effect.md: docs/img/steering-effect-<name>.png

_EFFECT = ("delta", "hit_rate")  # the goal's effect lines; the other checks are fluency
_MEASURES = ("alpha", "delta", "delta_low", "delta_high", "hit_rate", "ppl_median", "degenerate", "question")


def _measures(row: dict[str, Any]) -> dict[str, Any]:
    low, high = row["delta_ci95"]
    return {"alpha": row["alpha"], "delta": row["delta"], "delta_low": low, "delta_high": high,
            "hit_rate": row["hit_rate"], "ppl_median": row["ppl_median"], "degenerate": row["degenerate"],
            "question": row["question"]}


def _ci(frame: pd.DataFrame, prefix: str = "delta") -> list[str]:
    return [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in
            zip(frame[prefix], frame[f"{prefix}_low"], frame[f"{prefix}_high"], strict=True)]


def _text(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _table(columns: dict[str, Any], align: str, floatfmt: dict[str, str] | None = None) -> str:
    """A table of ``columns`` (header -> cells, strings or numbers), by ``core.tables.markdown_table``."""
    import pandas as pd

    from emolab.core.tables import markdown_table

    return markdown_table(pd.DataFrame({k: list(v) for k, v in columns.items()}, columns=list(columns)),
                          floatfmt=floatfmt or {}, align=align)


def heldout_frame(heldout: dict[str, Any]) -> pd.DataFrame:
    """Held-out numbers per emotion (index ``emotion``): recipe, effect with CI, fluency, goal checks.

    Columns: ``source``, ``layers`` (as ``format_layers`` writes them), ``alpha``, ``delta`` with
    ``delta_low`` / ``delta_high``, ``hit_rate``, ``ppl_median``, ``ppl_ratio`` (x the baseline's),
    ``degenerate``, ``question``, one ``meets_<check>`` per goal check and ``goal_met``.
    """
    import pandas as pd

    base = heldout["baseline"]
    rows = []
    for emotion, row in heldout["rows"].items():
        checks = {f"meets_{k}": bool(ok) for k, ok in row["checks"].items()}
        rows.append({"emotion": emotion, "source": row["recipe"]["source"], "layers": format_layers(row["layers"]),
                     **_measures(row), "ppl_ratio": row["ppl_median"] / base["ppl_median"], **checks,
                     "goal_met": all(checks.values())})
    empty = ["emotion", "source", "layers", *_MEASURES, "ppl_ratio", "goal_met"]  # the columns of no rows
    return pd.DataFrame(rows, columns=None if rows else empty).set_index("emotion")


def heldout_table(heldout: dict[str, Any]) -> str:
    """Per emotion: recipe, held-out delta with CI, hit rate, fluency, "?" share, goal checks."""
    base = heldout["baseline"]
    frame = heldout_frame(heldout)
    checks = [c for c in frame.columns if c.startswith("meets_")]
    failed = [[c.removeprefix("meets_") for c in checks if not row[c]] for _, row in frame[checks].iterrows()]
    table = _table({
        "emotion": frame.index, "method": frame["source"], "layers": frame["layers"],
        "alpha (normalized)": [f"{a:g}" for a in frame["alpha"]], "Δ target [95% CI]": _ci(frame),
        "hit rate": frame["hit_rate"],
        "median ppl (x base)": [f"{p:.2f} ({r:.2f}x)" for p, r in zip(frame["ppl_median"], frame["ppl_ratio"],
                                                                       strict=True)],
        "degenerate": frame["degenerate"], "\"?\" share": frame["question"],
        "goal met?": ["yes" if not f else "no: " + ", ".join(f) for f in failed],
    }, align="lllrlrrrrl", floatfmt={"hit rate": ".2f"})
    mean_delta = float(np.mean(frame["delta"].to_numpy())) if len(frame) else heldout["mean_delta"]  # = mean_delta
    mean_hit = np.mean(frame["hit_rate"].to_numpy())
    return (f"Baseline (unsteered, {heldout['n_prompts']} held-out prompts): median perplexity "
            f"{base['ppl_median']:.2f} (limit {2 * base['ppl_median']:.2f}), degenerate {base['degenerate']:.3f}, "
            f"\"?\" share {base['question']:.3f}, judge argmax counts {base['argmax_counts']}.\n\n" + table
            + f"| **mean** | | | | **{mean_delta:+.3f}** (goal {GOAL['mean_delta']:+.2f}) | {mean_hit:.2f} | | | | |\n")


def stage_frame(stage: dict[str, Any]) -> pd.DataFrame:
    """Every condition of a tuning stage (``search`` or ``confirm``), in the stage's order.

    Columns: ``emotion``, ``source``, ``layers``, the measures (``alpha``, ``delta`` with ``delta_low`` /
    ``delta_high``, ``hit_rate``, ``ppl_median``, ``degenerate``, ``question``) and ``score``
    (what the selection maximizes, ``score_of``).
    """
    import pandas as pd

    rows = [{"emotion": r["emotion"], "source": r["source"], "layers": format_layers(r["layers"]), **_measures(r),
             "score": score_of(r)} for r in stage["rows"]]
    return pd.DataFrame(rows, columns=["emotion", "source", "layers", *_MEASURES, "score"])


def search_table(stage: dict[str, Any], top: int = 4) -> str:
    """The best few conditions per emotion of a tuning stage (score = Δ + 0.5 hit), with fluency."""
    import pandas as pd

    base = stage["baseline"]
    frame = stage_frame(stage)
    best = [frame[frame["emotion"] == e].sort_values("score", ascending=False, kind="stable").head(top)
            for e in frame["emotion"].unique()]
    frame = pd.concat(best) if best else frame
    table = _table({
        "emotion": frame["emotion"], "source": frame["source"], "layers": frame["layers"],
        "alpha": [f"{a:g}" for a in frame["alpha"]], "Δ [95% CI]": _ci(frame), "hit": frame["hit_rate"],
        "ppl": frame["ppl_median"], "degenerate": frame["degenerate"], "\"?\"": frame["question"],
    }, align="lllrlrrrr", floatfmt={"hit": ".2f", "ppl": ".2f"})
    return (f"Baseline: median perplexity {base['ppl_median']:.2f}, degenerate {base['degenerate']:.3f}, "
            f"\"?\" share {base['question']:.3f} ({stage['n_prompts']} prompts).\n\n" + table)


def _recipe(row: dict[str, Any]) -> str:
    return f"{row['source']} {format_layers(row['layers'])} @ {row['alpha']:g}"


def reach_frame(stage: dict[str, Any], limits: Limits) -> pd.DataFrame:
    """Effect against fluency over every condition of a stage, one row per emotion (index ``emotion``).

    Columns: ``conditions``; how many meet the effect lines (``meet_effect``), are inside the fluency
    limits (``inside_limits``) or both (``both``); the best inside the limits (``best_delta``,
    ``best_hit_rate``; NaN: none); among those meeting the effect lines, the one of least fluency cost
    (``cheapest``, its ``cheapest_ppl_ratio``, ``cheapest_degenerate``; None/NaN: none); and the condition
    of the highest hit rate (``top``, ``top_hit_rate``, ``top_delta``).
    """
    import pandas as pd

    base = stage["baseline"]
    out = []
    for emotion in dict.fromkeys(r["emotion"] for r in stage["rows"]):
        rows = [r for r in stage["rows"] if r["emotion"] == emotion]
        effect = [r for r in rows if all(goal_checks(r, base, limits)[k] for k in _EFFECT)]
        fluent = [r for r in rows if limits.within(r, base)]
        best = max(fluent, key=score_of, default=None)
        cheap = min(effect, key=lambda r: (limits.excess(r, base), -score_of(r)), default=None)
        top = max(rows, key=lambda r: (r["hit_rate"], r["delta"]))
        nan = float("nan")
        out.append({"emotion": emotion, "conditions": len(rows), "meet_effect": len(effect),
                    "inside_limits": len(fluent), "both": sum(limits.within(r, base) for r in effect),
                    "best_delta": best["delta"] if best else nan, "best_hit_rate": best["hit_rate"] if best else nan,
                    "cheapest": _recipe(cheap) if cheap else None,
                    "cheapest_ppl_ratio": cheap["ppl_median"] / base["ppl_median"] if cheap else nan,
                    "cheapest_degenerate": cheap["degenerate"] if cheap else nan,
                    "top": _recipe(top), "top_hit_rate": top["hit_rate"], "top_delta": top["delta"]})
    columns = ["emotion", "conditions", "meet_effect", "inside_limits", "both", "best_delta", "best_hit_rate",
               "cheapest", "cheapest_ppl_ratio", "cheapest_degenerate", "top", "top_hit_rate", "top_delta"]
    return pd.DataFrame(out, columns=columns).set_index("emotion")


def reach_table(stage: dict[str, Any], limits: Limits) -> str:
    """Effect against fluency over every condition of a stage, per emotion (``reach_frame``).

    The selection shows the best condition inside the fluency limits; this shows whether the grid holds any
    condition meeting the effect lines at all, and what the cheapest of them costs in fluency, so a goal the
    grid cannot reach reads as a trade-off rather than a bad pick.
    """
    frame = reach_frame(stage, limits)
    best = ["none" if np.isnan(d) else f"{d:+.3f}, {h:.2f}"
            for d, h in zip(frame["best_delta"], frame["best_hit_rate"], strict=True)]
    cost = [f"{c}: {r:.2f}x, {g:.3f}" if isinstance(c, str) else f"none; highest hit rate {h:.2f} (Δ {d:+.3f}) at {t}"
            for c, r, g, h, d, t in zip(frame["cheapest"], frame["cheapest_ppl_ratio"], frame["cheapest_degenerate"],
                                        frame["top_hit_rate"], frame["top_delta"], frame["top"], strict=True)]
    return _table({
        "emotion": frame.index, "conditions": frame["conditions"], "meet the effect lines": frame["meet_effect"],
        "inside the fluency limits": frame["inside_limits"], "both": frame["both"],
        "best inside the limits: Δ, hit": best,
        "effect lines at least fluency cost: recipe, ppl (x base), degenerate": cost,
    }, align="lrrrrll")


def demo_frame(heldout: dict[str, Any]) -> pd.DataFrame:
    """The demo prompt's replies: ``steering``, ``reply``, ``judge_top``, ``judge_top_p``, one row per steering."""
    import pandas as pd

    return pd.DataFrame(heldout["demo"], columns=["steering", "reply", "judge_top", "judge_top_p"])


def tune_frames(report: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """A tune report's tables as DataFrames: ``heldout`` and ``demo`` (when evaluated held-out), ``confirm``,
    ``search`` and ``reach`` (over the search grid; when the report has a search)."""
    frames: dict[str, pd.DataFrame] = {}
    if "heldout" in report:
        frames.update(heldout=heldout_frame(report["heldout"]), demo=demo_frame(report["heldout"]))
    if "confirm" in report:
        frames["confirm"] = stage_frame(report["confirm"])
    if "search" in report:
        frames["search"] = stage_frame(report["search"])
        frames["reach"] = reach_frame(report["search"], Limits(**report["config"]["limits"]))
    return frames


def tune_markdown(report: dict[str, Any], figures: dict[str, str] | None = None) -> str:
    """docs/steering-effect.md: recipe, held-out numbers, the linked ``figures`` (name -> path relative to the
    Markdown file), examples, the demo, how the tune ran."""
    heldout = report["heldout"]
    cfg = report["config"]
    t = report["timings"]
    out = [heldout_table(heldout)]
    for name, path in (figures or {}).items():
        out += ["", f"![{name.replace('-', ' ')}]({path})"]
    out += ["", "### Three held-out examples per emotion (greedy, same prompt)", ""]
    for emotion, row in heldout["rows"].items():
        out.append(f"**{emotion}** ({row['recipe']['source']}, layers {format_layers(row['layers'])}, "
                   f"alpha {row['alpha']:g}):\n")
        for ex in row["examples"]:
            out.append(f"- *{ex['prompt']}*\n  - baseline (P({emotion}) {ex['p_target_baseline']:.2f}): "
                       f"\"{_text(ex['baseline'])}\"\n  - steered (P({emotion}) {ex['p_target_steered']:.2f}): "
                       f"\"{_text(ex['steered'])}\"")
        out.append("")
    demo = demo_frame(heldout)
    demo_prompt = heldout.get("demo_prompt", DEMO_PROMPT)
    out += [f"### The demo prompt, \"{demo_prompt}\" (recommended alphas)", "",
            _table({"steering": demo["steering"], "reply": [f"\"{_text(r)}\"" for r in demo["reply"]],
                    "judge's top emotion": [f"{e} {p:.2f}" for e, p in zip(demo["judge_top"], demo["judge_top_p"],
                                                                           strict=True)]}, align="lll").rstrip("\n")]
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


def _heldout_figures(report: dict[str, Any], folder: Path, prefix: str) -> dict[str, str]:
    from emolab.evaluate.effect_figures import HELDOUT_FIGURES, write_figures

    return write_figures(report, HELDOUT_FIGURES, folder, prefix) if report["heldout"]["rows"] else {}


def save_tune_report(report: dict[str, Any], folder: str | Path, plots: bool = True) -> Path:
    """``report.json`` (every number, no texts), the held-out plots (unless ``plots`` is False or the report has
    no held-out stage) and ``tables.md`` (``tune_markdown``, linking them) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    if "heldout" in report:
        text = tune_markdown(report, _heldout_figures(report, folder, "") if plots else None)
    else:
        text = search_table(report["confirm"])
    (folder / "tables.md").write_text(text)
    return folder


def write_tune_markdown(report: dict[str, Any], path: str | Path, plots: bool = True,
                        prefix: str = DOC_FIGURE_PREFIX) -> Path:
    """``tune_markdown`` as the file ``path`` (the body of docs/steering-effect.md), its plots written to
    ``img/<prefix><name>.png`` beside it and linked by that relative path (docs/img/ holds the committed ones)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = {}
    if plots:
        figures = {name: f"img/{file}" for name, file in _heldout_figures(report, path.parent / "img", prefix).items()}
    path.write_text(tune_markdown(report, figures))
    return path
