"""The controls comparison's report: its rule for adopting a control, the table, two plots, the files.

``controls_frame(report)`` is the table as a DataFrame (one row per emotion x condition); ``controls_markdown``
writes it (and links the plots) from that frame; ``save_controls_report`` writes ``report.json``, the plots
and ``controls.md``. ``write_control_recommendations`` is the one function that puts an adopted control into a
bundle's ``metadata.json`` (and, like ``write_recommendations``, refuses a bundle git tracks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emolab.core.tracked import refuse_tracked
from emolab.evaluate.selection import score_of
from emolab.evaluate.tune_bundle import GOAL

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ADOPTION_RULE", "CONTROLS_FIGURES", "RELEVANCE_MARGIN", "adoption", "controls_figures", "controls_frame",
           "controls_markdown", "save_controls_report", "write_control_recommendations"]

RELEVANCE_MARGIN = 0.05
ADOPTION_RULE = (
    "a control other than plain add is adopted for an emotion only if, on these prompts, add at the recommended "
    "alpha misses at least one goal line, the control meets every one (delta >= 0.15 with its 95% CI above 0, "
    "hit rate >= 0.4, median perplexity <= 2 x unsteered, degenerate rate <= unsteered + 0.1, '?' share <= "
    f"unsteered + 0.2) and its relevance is at least add's minus {RELEVANCE_MARGIN}; of several, the highest "
    "delta + 0.5 x hit rate. The prompted baseline is shown, never adopted (it is not a steering)."
)
CONTROLS_FIGURES = {"tradeoff": "controls-tradeoff.png", "bars": "controls-bars.png"}
_MARKERS = "osD^v<>Pp*Xh"


def _failed(row: dict[str, Any]) -> list[str]:
    return [k for k, ok in row["checks"].items() if not ok]


def adoption(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per emotion, by ``ADOPTION_RULE``: ``adopted`` (a control's name or None), its numbers, and why."""
    out: dict[str, dict[str, Any]] = {}
    for emotion in report["emotions"]:
        rows = [r for r in report["rows"] if r["emotion"] == emotion]
        add = next((r for r in rows if r["control"] == "add"), None)
        if add is None:
            out[emotion] = {"adopted": None, "reason": "plain add was not measured, so nothing can beat it"}
            continue
        if not _failed(add):
            out[emotion] = {"adopted": None, "reason": "add meets every goal line"}
            continue
        others = [r for r in rows if r["control"] not in ("add", "prompted")]
        passing = [r for r in others if not _failed(r)]
        relevant = [r for r in passing if r["relevance"] >= add["relevance"] - RELEVANCE_MARGIN]
        if relevant:
            best = max(relevant, key=score_of)
            out[emotion] = {"adopted": best["control"], "mode": best["mode"], "scope": best["scope"],
                            "value": best["value"], "add_missed": _failed(add),
                            "reason": f"add misses {', '.join(_failed(add))}; {best['control']} meets every line"}
        elif passing:
            out[emotion] = {"adopted": None, "add_missed": _failed(add),
                            "reason": f"{', '.join(r['control'] for r in passing)} meet every line but lose relevance"}
        else:
            out[emotion] = {"adopted": None, "add_missed": _failed(add),
                            "reason": f"add misses {', '.join(_failed(add))}; no other control meets every line"}
    return out


def controls_frame(report: dict[str, Any]) -> pd.DataFrame:
    """One row per emotion x condition, in the report's order.

    Columns: ``emotion``, ``control``, ``value`` (the alpha added or the level held; empty for prompted and
    ablate), ``target``, ``delta`` with ``delta_low`` / ``delta_high``, ``hit_rate``, ``ppl_median``, ``ppl_ratio``
    (x the unsteered median), ``degenerate``, ``question``, ``distinct_2``, ``relevance`` with ``relevance_low`` /
    ``relevance_high``, ``cosine`` (mean reply-prompt cosine), ``missed`` (goal lines missed, comma-separated;
    empty: all met) and ``adopted``.
    """
    import pandas as pd

    base = report["baseline"]
    adopted = {e: a.get("adopted") for e, a in report["adoption"].items()}
    rows = []
    for r in report["rows"]:
        rows.append({"emotion": r["emotion"], "control": r["control"], "value": r["value"], "target": r["target"],
                     "delta": r["delta"], "delta_low": r["delta_ci95"][0], "delta_high": r["delta_ci95"][1],
                     "hit_rate": r["hit_rate"], "ppl_median": r["ppl_median"],
                     "ppl_ratio": r["ppl_median"] / base["ppl_median"], "degenerate": r["degenerate"],
                     "question": r["question"], "distinct_2": r["distinct_2"], "relevance": r["relevance"],
                     "relevance_low": r["relevance_ci95"][0], "relevance_high": r["relevance_ci95"][1],
                     "cosine": r["cosine"], "missed": ", ".join(_failed(r)),
                     "adopted": adopted.get(r["emotion"]) == r["control"]})
    columns = ["emotion", "control", "value", "target", "delta", "delta_low", "delta_high", "hit_rate", "ppl_median",
               "ppl_ratio", "degenerate", "question", "distinct_2", "relevance", "relevance_low", "relevance_high",
               "cosine", "missed", "adopted"]
    return pd.DataFrame(rows, columns=columns)


def _legend_names(report: dict[str, Any]) -> list[str]:
    return (["prompted"] if report["prompted"] else []) + list(report["controls"])


def controls_figures(report: dict[str, Any]) -> dict[str, Any]:
    """``tradeoff``: per emotion, effect (Δ, CI) against fluency (perplexity x unsteered), colour = relevance;
    ``bars``: Δ, hit rate, perplexity ratio, degenerate rate and relevance per emotion and condition, goal lines."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    from emolab.core.figures import new_figure

    frame = controls_frame(report)
    names = _legend_names(report)
    emotions = list(report["emotions"])
    marker = {name: _MARKERS[i % len(_MARKERS)] for i, name in enumerate(names)}
    cols = min(3, len(emotions))
    rows = -(-len(emotions) // cols)
    trade = new_figure(4.0 * cols, 3.3 * rows + 0.8)
    axes = np.atleast_1d(trade.subplots(rows, cols, squeeze=False)).ravel()
    norm, cmap = Normalize(0.5, 1.1), colormaps["viridis"]
    limit = report["limits"]["ppl_factor"]
    for ax, emotion in zip(axes, emotions, strict=False):
        part = frame[frame["emotion"] == emotion]
        ax.axvline(limit, color="0.4", ls=":", lw=1)
        ax.axhline(GOAL["delta"], color="0.4", ls=":", lw=1)
        ax.axhline(0, color="0.6", lw=0.6)
        for _, r in part.iterrows():
            ax.errorbar(r["ppl_ratio"], r["delta"], yerr=[[r["delta"] - r["delta_low"]], [r["delta_high"] - r["delta"]]],
                        fmt=marker[r["control"]], ms=8 if r["adopted"] else 6, mfc=cmap(norm(r["relevance"])),
                        mec="black" if r["missed"] == "" else "0.5", ecolor="0.6", capsize=2, label=r["control"])
        ax.set_xscale("log")
        low, high = min(0.95, float(part["ppl_ratio"].min()) * 0.95), max(limit * 1.1, float(part["ppl_ratio"].max()) * 1.1)
        top = max(0.6, float(part["delta_high"].max()) + 0.05)
        ax.fill_between([low, limit], GOAL["delta"], top, color="0.92", zorder=0, lw=0)  # every effect line and ppl
        ax.set_xlim(low, high)
        ax.set_ylim(min(-0.1, float(part["delta_low"].min()) - 0.05), top)
        ticks = [t for t in (1, 1.5, 2, 3, 5, 10, 20, 50) if low <= t <= high]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{emotion} (Δ goal {GOAL['delta']}, ppl limit {limit:g}x)", fontsize=9)
        ax.set_xlabel("median perplexity / unsteered", fontsize=8)
        ax.set_ylabel("Δ P(target) vs unsteered", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(emotions):]:
        ax.axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    trade.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=7, frameon=False)
    trade.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes[:len(emotions)].tolist(), fraction=0.02,
                   label="relevance (x unsteered)")
    trade.suptitle("Effect against fluency per control (colour: instruction relevance; black edge: every goal line "
                   "met; grey: the Δ goal inside the perplexity limit)", fontsize=10)

    bars = new_figure(max(8.0, 0.2 * len(emotions) * len(names) + 2.5), 10.0)
    panels = bars.subplots(5, 1, sharex=True)
    width = 0.8 / max(1, len(names))
    x = np.arange(len(emotions))
    palette = colormaps["tab10"]
    specs = (("delta", "Δ P(target)", ("delta_low", "delta_high"), GOAL["delta"]),
             ("hit_rate", "hit rate", None, GOAL["hit_rate"]),
             ("ppl_ratio", "median ppl / unsteered", None, limit),
             ("degenerate", "degenerate rate", None, report["baseline"]["degenerate"] + report["limits"][
                 "degenerate_tolerance"]),
             ("relevance", "relevance (x unsteered)", ("relevance_low", "relevance_high"), 1.0))
    for ax, (column, label, ci, line) in zip(panels, specs, strict=True):
        for i, name in enumerate(names):
            part = frame[frame["control"] == name].set_index("emotion").reindex(emotions)
            values = part[column].to_numpy(dtype=float)
            err = None if ci is None else np.vstack([values - part[ci[0]].to_numpy(dtype=float),
                                                     part[ci[1]].to_numpy(dtype=float) - values])
            ax.bar(x - 0.4 + width * (i + 0.5), values, width=width, yerr=err, capsize=1.5, label=name,
                   color=palette(i % 10), edgecolor="0.2", linewidth=0.5, hatch="//" if name == "prompted" else None,
                   error_kw={"lw": 0.8})
        ax.axhline(line, color="0.3", ls=":", lw=1)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    if frame["ppl_ratio"].max() > 5:
        panels[2].set_yscale("log")
    panels[-1].set_xticks(x, emotions)
    bars.legend(*panels[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(len(names), 5),
                fontsize=7, frameon=False)
    bars.suptitle("Per emotion and condition (dotted: goal line, fluency limit, or relevance 1 = as on-topic as "
                  "unsteered)", fontsize=9)
    return {"tradeoff": trade, "bars": bars}


def _ci(values: Any, lows: Any, highs: Any, fmt: str) -> list[str]:
    return [f"{v:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" for v, lo, hi in zip(values, lows, highs, strict=True)]


def controls_markdown(report: dict[str, Any], figures: dict[str, str] | None = None) -> str:
    """The table (from ``controls_frame``), the levels, the adoption per emotion and the linked ``figures``
    (name -> path relative to where the Markdown is written)."""
    import pandas as pd

    from emolab.core.tables import markdown_table

    base = report["baseline"]
    frame = controls_frame(report)
    shown = pd.DataFrame({
        "emotion": frame["emotion"],
        "control": [f"**{c}** (adopted)" if a else c for c, a in zip(frame["control"], frame["adopted"], strict=True)],
        "alpha / level": ["" if v is None or v != v else f"{v:g}" for v in frame["value"]],
        "Δ target [95% CI]": _ci(frame["delta"], frame["delta_low"], frame["delta_high"], "+.3f"),
        "hit rate": frame["hit_rate"],
        "median ppl (x base)": [f"{p:.2f} ({r:.2f}x)" for p, r in zip(frame["ppl_median"], frame["ppl_ratio"],
                                                                       strict=True)],
        "degenerate": frame["degenerate"],
        "relevance [95% CI]": _ci(frame["relevance"], frame["relevance_low"], frame["relevance_high"], ".2f"),
        "goal lines": ["all met" if not m else "missed: " + m for m in frame["missed"]],
    })
    levels = []
    for emotion, c in report["calibration"].items():
        levels.append(f"{emotion} {c['matched']:.2f} (unsteered {c['natural']:+.2f})")
    lines = [
        f"{report['n_prompts']} prompts ({report['prompt_set']}, from the top), greedy, "
        f"{report['config']['max_new_tokens']} new tokens, each emotion at its recommended alpha ({report['scale']} scale). Unsteered: median perplexity "
        f"{base['ppl_median']:.2f}, degenerate {base['degenerate']:.3f}, \"?\" share {base['question']:.3f}, mean "
        f"reply-prompt cosine {base['cosine']:.3f}.",
        "",
    ]
    if levels:
        lines += ["Matched clamp level (alpha units; where plain add holds the projection on average over the "
                  f"emotion's layers and generated tokens, first {report['config']['calibration_prompts']} tuning "
                  "prompts): " + "; ".join(levels) + ".", ""]
    lines += [markdown_table(shown, floatfmt={"hit rate": ".2f", "degenerate": ".3f"}, align="lllrrrrrl"), "",
              f"Adoption rule: {report.get('rule', ADOPTION_RULE)}", ""]
    for emotion, a in report["adoption"].items():
        lines.append(f"- {emotion}: " + (f"**{a['adopted']} adopted** ({a['reason']})" if a["adopted"]
                                         else f"nothing adopted ({a['reason']})"))
    for name, path in (figures or {}).items():
        lines += ["", f"![controls: {name}]({path})"]
    return "\n".join(lines) + "\n"


def save_controls_report(report: dict[str, Any], folder: str | Path, plots: bool = True) -> Path:
    """``report.json``, the plots (``CONTROLS_FIGURES``) and ``controls.md`` linking them, in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = {**report, "rule": ADOPTION_RULE}
    (folder / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    links = {}
    if plots:
        for name, fig in controls_figures(report).items():
            fig.savefig(folder / CONTROLS_FIGURES[name], dpi=100)
            links[name] = CONTROLS_FIGURES[name]
    (folder / "controls.md").write_text(controls_markdown(report, links))
    return folder / "controls.md"


def write_control_recommendations(bundle_path: str | Path, report: dict[str, Any]) -> Path:
    """Put the adopted controls (``control_recommendations``) and a summary (``controls_eval``) into the bundle's
    metadata.json; nothing else changes. A bundle git tracks is refused (``TrackedPathError``)."""
    refuse_tracked(bundle_path, setting="bundle")
    path = Path(bundle_path) / "metadata.json"
    metadata = json.loads(path.read_text())
    adopted = {e: {k: a[k] for k in ("adopted", "mode", "scope", "value")} | {"scale": report["scale"]}
               for e, a in report["adoption"].items() if a["adopted"]}
    metadata["control_recommendations"] = adopted
    metadata["controls_eval"] = {
        "rule": ADOPTION_RULE, "prompts": report["prompt_set"], "n_prompts": report["n_prompts"],
        "max_new_tokens": report["config"]["max_new_tokens"], "controls": report["controls"],
        "per_emotion": {e: {r["control"]: {k: r[k] for k in ("value", "delta", "hit_rate", "ppl_median", "degenerate",
                                                              "relevance")}
                            for r in report["rows"] if r["emotion"] == e} for e in report["emotions"]},
        "adoption": {e: a["reason"] for e, a in report["adoption"].items()},
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata, indent=2) + "\n")
    tmp.replace(path)
    return path
