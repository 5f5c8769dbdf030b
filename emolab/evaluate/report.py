"""Reports of an eval run: per-condition summaries, the confusion matrix, the report as a frame, files.

``eval_frame(report)`` is the report's table as a DataFrame (one row per emotion x alpha); the Markdown
(``markdown_tables``, ``tables.md``) is written from it, and it rebuilds from a saved ``report.json``.
``write_recommendations`` is the one function that writes into a bundle's ``metadata.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emolab.core.tracked import refuse_tracked
from emolab.evaluate.metrics import bootstrap_ci, ngrams, recommend_alpha, words

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["confusion", "eval_frame", "markdown_tables", "save_report", "summarize_conditions", "write_recommendations"]

# eval_frame's columns; the curve's keys where they have the same name.
_CURVE = ("alpha", "target", "target_delta", "hit_rate", "perplexity_median", "distinct_1", "distinct_2",
          "distinct_2_pooled", "degenerate_rate", "mean_tokens")
_COLUMNS = ["emotion", "alpha", "recommended", "target", "target_delta", "target_delta_low", "target_delta_high",
            "hit_rate", "off_target", "off_target_delta", "perplexity_median", "distinct_1", "distinct_2",
            "distinct_2_pooled", "degenerate_rate", "mean_tokens"]


def summarize_conditions(results: list[dict], judge: Any, emotions: list[str], alphas: list[float],
                         config: Any) -> dict[str, Any]:
    """Per (emotion, alpha): judge means and shifts, fluency, recommendation and the confusion matrix."""
    base = results[0]
    base_proba = np.asarray(base["judge"])
    base_ppl = float(np.nanmedian(base["perplexity"]))
    base_deg = float(np.mean(base["degenerate"]))
    jidx = {e: i for i, e in enumerate(judge.emotions)}

    def stats(res: dict) -> dict[str, Any]:
        proba = np.asarray(res["judge"])
        toks = [words(t) for t in res["texts"]]
        pooled = [g for t in toks for g in ngrams(t, 2)]
        return {
            "judge_mean": dict(zip(judge.emotions, np.round(proba.mean(axis=0), 4).tolist(), strict=True)),
            "perplexity_median": round(float(np.nanmedian(res["perplexity"])), 3),
            "distinct_1": round(float(np.mean(res["distinct_1"])), 4),
            "distinct_2": round(float(np.mean(res["distinct_2"])), 4),
            "distinct_2_pooled": round(len(set(pooled)) / len(pooled), 4) if pooled else 0.0,
            "degenerate_rate": round(float(np.mean(res["degenerate"])), 4),
            "mean_tokens": round(float(np.mean(res["n_tokens"])), 2),
        }

    per_emotion: dict[str, Any] = {}
    recommendations: dict[str, float | None] = {}
    for emotion in emotions:
        t = jidx[emotion]
        rows = [r for r in results[1:] if r["emotion"] == emotion]
        curve = []
        for r in rows:
            s = stats(r)
            diff = np.asarray(r["judge"])[:, t] - base_proba[:, t]
            lo, hi = bootstrap_ci(diff, seed=config.seed)
            s.update(
                alpha=r["alpha"],
                target=round(float(np.mean(np.asarray(r["judge"])[:, t])), 4),
                target_delta=round(float(diff.mean()), 4),
                target_delta_ci95=[round(lo, 4), round(hi, 4)],
                hit_rate=round(float(np.mean(np.asarray(r["judge"]).argmax(axis=1) == t)), 4),
                off_target_delta={
                    e: round(float(np.mean(np.asarray(r["judge"])[:, i] - base_proba[:, i])), 4)
                    for e, i in jidx.items() if e != emotion
                },
            )
            curve.append(s)
        rec = recommend_alpha(
            [c["alpha"] for c in curve], [c["perplexity_median"] for c in curve], [c["degenerate_rate"] for c in curve],
            base_ppl, base_deg, config.ppl_factor, config.degenerate_tolerance,
        )
        recommendations[emotion] = rec
        at_rec = next((c for c in curve if c["alpha"] == rec), None)
        moved_at = [c["alpha"] for c in curve if c["target_delta_ci95"][0] > 0]
        per_emotion[emotion] = {
            "curve": curve,
            "recommended_alpha": rec,
            "moved_at_recommended": bool(at_rec and at_rec["target_delta_ci95"][0] > 0),
            "alphas_where_judge_moved": moved_at,
        }
    baseline = stats(base)
    baseline["target_hit_rate"] = {e: round(float(np.mean(base_proba.argmax(axis=1) == i)), 4) for e, i in jidx.items()}
    return {
        "emotions": emotions,
        "alphas": alphas,
        "n_prompts": len(config.prompts),
        "config": asdict(config),
        "judge": {"test_auc": judge.test_auc, **judge.info},
        "baseline": baseline,
        "per_emotion": per_emotion,
        "alpha_recommendations": recommendations,
        "confusion": confusion(per_emotion, judge.emotions, emotions),
        "rule": (
            f"largest alpha > 0 such that it and every smaller alpha keep median continuation perplexity "
            f"<= {config.ppl_factor} x baseline and degenerate rate <= baseline + {config.degenerate_tolerance}"
        ),
    }


def confusion(per_emotion: dict[str, Any], judge_emotions: list[str], emotions: list[str]) -> dict[str, Any]:
    """Mean judge probabilities (columns) when steering each emotion (rows) at its chosen alpha.

    The chosen alpha is the recommended one, else the smallest of the sweep.
    """
    matrix, chosen = [], []
    for emotion in emotions:
        curve = per_emotion[emotion]["curve"]
        alpha = per_emotion[emotion]["recommended_alpha"]
        alpha = alpha if alpha is not None else min(c["alpha"] for c in curve)
        row = next(c for c in curve if c["alpha"] == alpha)
        matrix.append([row["judge_mean"][j] for j in judge_emotions])
        chosen.append(alpha)
    return {"rows": emotions, "columns": judge_emotions, "alpha": chosen, "matrix": matrix}



def write_recommendations(bundle_path: str | Path, report: dict[str, Any]) -> Path:
    """Put ``alpha_recommendations`` (+ its scale and an eval summary) into the bundle's metadata.json.

    Only these keys change; vectors and every other key stay as they are. Emotions without a fluent
    alpha are left out of ``alpha_recommendations``. A bundle a git checkout tracks is refused
    (``TrackedPathError``): committed bundles change only by a deliberate copy and commit.
    """
    refuse_tracked(bundle_path, setting="bundle")
    path = Path(bundle_path) / "metadata.json"
    metadata = json.loads(path.read_text())
    recs = {e: a for e, a in report["alpha_recommendations"].items() if a is not None}
    metadata["alpha_recommendations"] = recs
    metadata["alpha_recommendations_scale"] = report["scale"]
    metadata["steering_eval"] = {
        "judge_test_auc_macro": report["judge"]["test_auc"]["macro"],
        "rule": report["rule"],
        "alphas": report["alphas"],
        "n_prompts": report["n_prompts"],
        "max_new_tokens": report["config"]["max_new_tokens"],
        "baseline_perplexity_median": report["baseline"]["perplexity_median"],
        "target_delta_at_recommended": {
            e: next((c["target_delta"] for c in v["curve"] if c["alpha"] == v["recommended_alpha"]), None)
            for e, v in report["per_emotion"].items()
        },
        "moved_at_recommended": {e: v["moved_at_recommended"] for e, v in report["per_emotion"].items()},
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata, indent=2) + "\n")
    tmp.replace(path)
    return path


def eval_frame(report: dict[str, Any]) -> pd.DataFrame:
    """The report's steered conditions as a DataFrame: one row per emotion x alpha, in the report's order.

    Columns: ``emotion``, ``alpha``, ``recommended`` (the emotion's recommended alpha), ``target``,
    ``target_delta`` with ``target_delta_low`` / ``target_delta_high`` (its 95% CI), ``hit_rate``,
    ``off_target`` / ``off_target_delta`` (the judge emotion that moved most besides the target),
    ``perplexity_median``, ``distinct_1``, ``distinct_2``, ``distinct_2_pooled``, ``degenerate_rate``,
    ``mean_tokens``. The numbers are the report's, unchanged; the baseline is ``report["baseline"]``.
    """
    import pandas as pd

    rows = []
    for emotion, info in report["per_emotion"].items():
        for c in info["curve"]:
            off, off_delta = max(c["off_target_delta"].items(), key=lambda kv: abs(kv[1]))
            low, high = c["target_delta_ci95"]
            rows.append({"emotion": emotion, **{k: c[k] for k in _CURVE}, "target_delta_low": low,
                         "target_delta_high": high, "recommended": c["alpha"] == info["recommended_alpha"],
                         "off_target": off, "off_target_delta": off_delta})
    return pd.DataFrame(rows, columns=_COLUMNS)


def markdown_tables(report: dict[str, Any], figures: dict[str, str] | None = None) -> str:
    """The report's numbers as Markdown tables, written from ``eval_frame``, then the ``figures`` it links
    (name -> path relative to the Markdown file; ``save_report`` writes them)."""
    import pandas as pd

    from emolab.core.tables import markdown_table

    base = report["baseline"]
    frame = eval_frame(report)
    marks = [" **(rec.)**" if rec else "" for rec in frame["recommended"]]
    shown = pd.DataFrame({  # the frame's numbers as the table shows them
        "emotion": frame["emotion"],
        "alpha": [f"{a:g}{mark}" for a, mark in zip(frame["alpha"], marks, strict=True)],
        "P(target)": frame["target"],
        "Δ vs baseline [95% CI]": [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in zip(
            frame["target_delta"], frame["target_delta_low"], frame["target_delta_high"], strict=True)],
        "hit rate": frame["hit_rate"],
        "largest off-target Δ": [f"{e} {d:+.3f}" for e, d in zip(frame["off_target"], frame["off_target_delta"],
                                                                  strict=True)],
        "median ppl": frame["perplexity_median"],
        "distinct-2": frame["distinct_2"],
        "pooled distinct-2": frame["distinct_2_pooled"],
        "degenerate": frame["degenerate_rate"],
    })
    formats = {"P(target)": ".3f", "hit rate": ".2f", "median ppl": ".1f", "distinct-2": ".2f",
               "pooled distinct-2": ".2f", "degenerate": ".2f"}
    links = "".join(f"\n![{name.replace('_', ' ')}]({path})\n" for name, path in (figures or {}).items())
    return (f"Baseline (unsteered): median perplexity {base['perplexity_median']}, "
            f"degenerate rate {base['degenerate_rate']}, distinct-2 {base['distinct_2']}, "
            f"judge means {base['judge_mean']}.\n\n" + markdown_table(shown, floatfmt=formats, align="lrrlrlrrrr")
            + links)


def save_report(report: dict[str, Any], output: str | Path, plots: bool = True) -> Path:
    """``report.json``, the figures (``effect_figures.EVAL_FIGURES``: ``effect_curves.png``, ``fluency.png``,
    ``confusion.png``; unless ``plots`` is False) and ``tables.md`` linking them, in ``output``."""
    from emolab.evaluate.effect_figures import EVAL_FIGURES, write_figures

    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    figures = write_figures(report, EVAL_FIGURES, folder) if plots and report["per_emotion"] else {}
    (folder / "tables.md").write_text(markdown_tables(report, figures))
    return folder

