"""The readout checks' report: two tables, two plots (linked from report.md), and the CSVs they come from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emolab.core.figures import emotion_color, new_figure
from emolab.core.tables import markdown_table

__all__ = ["write_readout_report"]


def _auc_plot(auc: pd.DataFrame, path: Path) -> None:
    fig = new_figure(7.0, 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(auc))
    for offset, column, low, high, label in ((-0.25, "readout_auc_mean", "mean_ci_low", "mean_ci_high",
                                              "readout (mean over tokens)"),
                                             (0.0, "readout_auc_last", "last_ci_low", "last_ci_high",
                                              "readout (last token)")):
        values = auc[column].to_numpy()
        err = np.vstack([values - auc[low].to_numpy(), auc[high].to_numpy() - values])
        ax.bar(x + offset, values, width=0.25, yerr=err, capsize=2, label=label, alpha=0.85 if offset else 0.6)
    ax.bar(x + 0.25, auc["probe_auc"], width=0.25, color="0.4", label="probe (same layers)")
    ax.axhline(0.5, color="0.5", linewidth=0.8, linestyle=":")
    ax.set_xticks(x, auc["emotion"])
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("ROC-AUC, one vs rest")
    ax.set_title("held-out texts ranked by the readout, beside the bundle's probe")
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path)


def _readback_plot(summary: pd.DataFrame, emotions: list[str], path: Path) -> None:
    fig = new_figure(7.0, 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(emotions))
    for offset, sign, hatch in ((-0.2, 1, None), (0.2, -1, "//")):
        rows = summary[np.sign(summary.alpha) == sign].set_index("emotion").loc[emotions]
        values = rows["shift"].to_numpy()
        err = np.vstack([values - rows["ci_low"].to_numpy(), rows["ci_high"].to_numpy() - values])
        ax.bar(x + offset, values, width=0.38, yerr=err, capsize=2, hatch=hatch,
               color=[emotion_color(i) for i in range(len(emotions))], edgecolor="0.2",
               label="+alpha" if sign > 0 else "-alpha")
    ax.axhline(0, color="0.4", linewidth=0.8)
    ax.set_xticks(x, emotions)
    ax.set_ylabel("score shift vs unsteered reply")
    ax.set_title("steered replies read back unsteered: the steered emotion's score")
    ax.legend(fontsize=8)
    fig.savefig(path)


def write_readout_report(folder: str | Path, auc: pd.DataFrame, summary: pd.DataFrame, replies: pd.DataFrame, *,
                         model: str, bundle: str, scale: str, settings: str) -> Path:
    """``report.md`` with both tables and their plots, and ``auc.csv``, ``readback.csv``, ``replies.csv``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    auc.to_csv(folder / "auc.csv", index=False)
    summary.to_csv(folder / "readback.csv", index=False)
    replies.to_csv(folder / "replies.csv", index=False)
    emotions = list(auc["emotion"])
    _auc_plot(auc, folder / "readout-auc.png")
    _readback_plot(summary, emotions, folder / "readback.png")
    auc_table = auc.assign(
        mean_pooled=[f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in zip(auc.readout_auc_mean, auc.mean_ci_low,
                                                                             auc.mean_ci_high, strict=True)],
        last_token=[f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in zip(auc.readout_auc_last, auc.last_ci_low,
                                                                           auc.last_ci_high, strict=True)],
    )[["emotion", "layers", "texts", "mean_pooled", "last_token", "probe_auc"]]
    back = summary.assign(interval=[f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in zip(summary.ci_low, summary.ci_high,
                                                                                 strict=True)])
    back = back[["emotion", "alpha", "prompts", "unsteered_score", "steered_score", "shift", "interval"]]
    text = f"""# Readout checks

Model `{model}`, bundle `{bundle}`; scores: {scale}. {settings}

## 1. Held-out texts ranked by the readout

Each held-out text's score per emotion (mean over its content tokens, and at its last token), ranked one
emotion against the rest; 95% bootstrap intervals over texts; the probe AUC is the bundle's logistic probe at
the emotion's layers (it reads the whole state, the readout one direction).

{markdown_table(auc_table, floatfmt={"probe_auc": ".3f"})}

![readout AUC](readout-auc.png)

## 2. Steered replies read back unsteered

Each prompt's unsteered reply and its replies steered with +alpha and -alpha per emotion, each read with no
steering (prompt and reply as a chat, score over the reply); shift = steered minus unsteered score of the
steered emotion, mean over prompts with a 95% bootstrap interval over prompts. What the text carries, not the push.

{markdown_table(back, floatfmt={"alpha": "+.3f", "unsteered_score": "+.3f", "steered_score": "+.3f", "shift": "+.3f"})}

![read-back shifts](readback.png)
"""
    (folder / "report.md").write_text(text)
    return folder / "report.md"
