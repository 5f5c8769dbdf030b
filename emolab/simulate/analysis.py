"""A run's trials as a tidy DataFrame, and the effects a researcher reads off it, each with a bootstrap 95% CI.

Effects are paired: every condition runs the same cells (persona x arm x seed, or replicate x agent x
turn) as the control, so an effect is the mean over cells of (condition - control). CIs resample whole
independent units (a persona with all its arms, so every resample keeps the counterbalancing, and for a
choice all its seeds too; a number's persona x seed, each reply a draw; a conversation), never single
dependent rows; with one unit there is no CI (NaN). Each effect also has a sign-flip permutation p-value
over the same units, adjusted across the experiment's comparisons (Holm: family-wise; Benjamini-Hochberg:
false discovery rate), since an experiment of many emotions and alphas will show some intervals off zero by
chance. The headline of a choice
experiment is the **order-corrected** probability of the outcome option (the mean over arms, each
option shown first and labelled A equally often); beside it, never mixed in, the label bias (how
much more than chance the label shown as the first label is chosen) and the position bias (the
option shown first), and the uncorrected value from arm 0 alone, which is what a design without
counterbalancing would have reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from emolab.core.stats import benjamini_hochberg, between_groups_p, holm, sign_flip_p
from emolab.simulate.readout import copied_share, numbers_in, parse_number

__all__ = [
    "amount_effects", "amount_probabilities", "bootstrap_mean", "choice_effects", "contagion", "corrected",
    "dose_response", "effects", "number_effects", "outcome_design", "paired_p", "sign_check", "steered_vs_prompted",
    "subgroup_effects", "trials_frame", "units",
]

N_BOOT = 2000


def trials_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per trial: design columns, readouts (``p_<option>``, ``judged_<emotion>``), timing."""
    rows = []
    for r in records:
        row = {k: r.get(k) for k in ("trial_id", "experiment", "kind", "condition", "condition_kind", "emotion",
                                      "multiple", "alpha", "persona_index", "arm", "seed", "replicate", "turn",
                                      "agent", "seeded", "level", "reply", "finish_reason", "latency_s",
                                      "label_mass", "readout_position", "parsed_choice", "parsed_number",
                                      "expected_number")
               if k in r}
        if r.get("number_distribution"):
            row["amount_mass"] = r["number_distribution"]["mass"]
            row["amount_probs"] = r["number_distribution"]["probs"]
        row["completion_tokens"] = (r.get("usage") or {}).get("completion_tokens")
        if r.get("parsed_number") is not None and r.get("finish_reason") == "length" \
                and parse_number(r.get("reply") or "", cut=True) is None:
            row["parsed_number"] = None  # logged before the cut was checked: its number ran into the cut
        if r.get("kind") == "number" and r.get("messages"):
            prompt = next((m["content"] for m in reversed(r["messages"]) if m.get("role") == "user"), "")
            written = set(numbers_in(prompt))
            row["from_prompt"] = (np.nan if row.get("parsed_number") is None
                                  else float(row["parsed_number"] in written))
            if row.get("amount_probs") and row["amount_mass"] > 0:  # the read amounts' share the prompt wrote
                row["amount_from_prompt"] = sum(p for v, p in row["amount_probs"].items()
                                                if float(v) in written) / row["amount_mass"]
        if r.get("order"):
            row["first_option"] = r["order"][0]
            row["option_labelled_first"] = dict(zip(r["labels"], r["order"], strict=True))[sorted(r["labels"])[0]]
        for option, p in (r.get("option_probs") or {}).items():
            row[f"p_{option}"] = p
        for emotion, p in (r.get("judged") or {}).items():
            row[f"judged_{emotion}"] = p
        if r.get("kind") == "conversation" and r.get("messages"):
            row["copied"] = copied_share(r.get("reply") or "", r["messages"][-1]["content"])
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "multiple" in frame:
        frame["multiple"] = frame["multiple"].astype(float)
    return frame


def bootstrap_mean(values: Sequence[float], clusters: Sequence[Any] | None = None, *, n_boot: int = N_BOOT,
                   seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its 95% percentile CI, resampling ``clusters`` whole when given.

    With clusters the mean is the mean of cluster means (a cluster is one independent unit, e.g. a
    persona holding every counterbalanced arm, so each resample stays balanced). With fewer than
    two units there is nothing to resample: the CI is NaN, not a zero-width interval.
    """
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    if clusters is not None:
        labels = pd.Series(list(clusters), dtype=object)[keep].tolist()
        values = pd.Series(values[keep]).groupby(pd.Series(labels).astype(str), sort=False).mean().to_numpy()
    else:
        values = values[keep]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    point = float(values.mean())
    if values.size < 2:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = rng.choice(values, size=(n_boot, values.size), replace=True).mean(axis=1)
    low, high = np.percentile(boots, [2.5, 97.5])
    return point, float(low), float(high)


def units(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """One label per row naming its independent unit (the values of ``columns``)."""
    return frame[columns].astype(str).agg("|".join, axis=1).tolist() if len(frame) else []


def paired_p(paired: pd.DataFrame, unit: list[str]) -> float:
    """The sign-flip p-value of a paired effect: ``paired``'s ``diff`` averaged per independent unit first."""
    keep = paired[paired["diff"].notna()]
    if keep.empty:
        return float("nan")
    per_unit = keep["diff"].groupby(pd.Series(units(keep, unit), index=keep.index), sort=False).mean()
    return sign_flip_p(per_unit.to_numpy())


def corrected(table: pd.DataFrame, family: str | None = None) -> pd.DataFrame:
    """``p_holm`` and ``q_bh`` beside ``p_value``, the family being every row with a p-value (or, with
    ``family``, every row sharing that column's value)."""
    out = table.copy()
    out["p_holm"], out["q_bh"] = np.nan, np.nan
    groups = [out.index] if family is None else [idx for _, idx in out.groupby(family, sort=False).groups.items()]
    for idx in groups:
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p_value"].to_numpy(dtype=float))
        out.loc[idx, "q_bh"] = benjamini_hochberg(out.loc[idx, "p_value"].to_numpy(dtype=float))
    return out


def _paired(frame: pd.DataFrame, name: str, column: str, cells: list[str]) -> pd.DataFrame:
    """Rows of condition ``name`` joined to the control's row of the same cell: ``value``, ``control``, ``diff``."""
    treat = frame[frame["condition"] == name].set_index(cells)[column].rename("value")
    control = frame[frame["condition"] == "control"].set_index(cells)[column].rename("control")
    joined = pd.concat([treat, control], axis=1, join="inner").reset_index()
    joined["diff"] = joined["value"] - joined["control"]
    return joined


def effects(frame: pd.DataFrame, column: str, cells: list[str], unit: list[str]) -> pd.DataFrame:
    """Per condition: n, mean of ``column`` with CI, and the paired effect against the control with CI.

    ``cells``: the columns that pair a row with the control's; ``unit``: those that make one independent
    unit, resampled whole (``n_units`` of them).
    """
    rows = []
    meta = frame.drop_duplicates("condition").set_index("condition")
    for name in frame["condition"].drop_duplicates():
        sub = frame[frame["condition"] == name]
        mean, low, high = bootstrap_mean(sub[column], units(sub, unit))
        row = {"condition": name, "kind": meta.loc[name, "condition_kind"], "emotion": meta.loc[name, "emotion"],
               "multiple": meta.loc[name, "multiple"], "alpha": meta.loc[name, "alpha"],
               "n": int(sub[column].notna().sum()), "n_units": len(set(units(sub[sub[column].notna()], unit))),
               "mean": mean, "mean_low": low, "mean_high": high}
        if name != "control":
            paired = _paired(frame, name, column, cells)
            eff, elow, ehigh = bootstrap_mean(paired["diff"], units(paired, unit))
            row.update(effect=eff, effect_low=elow, effect_high=ehigh, n_pairs=int(paired["diff"].notna().sum()),
                       p_value=paired_p(paired, unit))
        else:
            row.update(effect=0.0, effect_low=0.0, effect_high=0.0, n_pairs=int(sub[column].notna().sum()),
                       p_value=np.nan)
        rows.append(row)
    return corrected(pd.DataFrame(rows)) if rows else pd.DataFrame(rows)


def outcome_design(kind: str, outcome: str) -> tuple[str, list[str], list[str]]:
    """(column, cells, unit) of a choice or number experiment's headline effect.

    A choice's unit is the persona with all its arms and seeds: an option's probability is read from the logprobs,
    the model's distribution rather than a draw from it, so a persona's seeds repeat (or nearly repeat) one value.
    A number's unit is a persona x seed: each parsed reply is a draw.
    """
    cells = ["persona_index", "arm", "seed"]
    if kind == "choice":
        return f"p_{outcome}", cells, ["persona_index"]
    return "parsed_number", cells, ["persona_index", "seed"]


def choice_effects(frame: pd.DataFrame, outcome: str, n_options: int) -> pd.DataFrame:
    """The order-corrected P(outcome) per condition and its effect, with the parsed choice and the biases beside."""
    table = effects(frame, *outcome_design("choice", outcome))
    extra = []
    for name, sub in frame.groupby("condition", sort=False):
        p_first_label = _chosen_prob(sub, "option_labelled_first")
        p_first_shown = _chosen_prob(sub, "first_option")
        parsed = sub["parsed_choice"]
        extra.append({
            "condition": name,
            "uncorrected": float(sub.loc[sub["arm"] == 0, f"p_{outcome}"].mean()),
            "label_bias": float(np.nanmean(p_first_label)) - 1.0 / n_options,
            "position_bias": float(np.nanmean(p_first_shown)) - 1.0 / n_options,
            "label_mass": float(sub["label_mass"].mean()),
            "chose_outcome": float((parsed == outcome).sum() / parsed.notna().sum()) if parsed.notna().any() else np.nan,
            "unparseable": int(parsed.isna().sum()),
        })
    return table.merge(pd.DataFrame(extra), on="condition")


def _chosen_prob(sub: pd.DataFrame, column: str) -> np.ndarray:
    """Per trial, the probability of the option named in ``column`` (e.g. the one shown first)."""
    return np.array([row.get(f"p_{row[column]}", np.nan) for row in sub.to_dict("records")], dtype=np.float64)


def number_effects(frame: pd.DataFrame) -> pd.DataFrame:
    """The mean parsed number per condition and its effect; beside it the unparseable replies and, where the
    prompts are logged, ``from_prompt``: the share of parsed answers that repeat a number the prompt wrote (its
    endowment or bounds; a model that echoes the prompt writes them, so an effect made of these is thin)."""
    table = effects(frame, *outcome_design("number", ""))
    grouped = frame.groupby("condition", sort=False)
    extra = grouped["parsed_number"].apply(lambda s: int(s.isna().sum())).rename("unparseable").to_frame()
    if "from_prompt" in frame:
        extra["from_prompt"] = grouped["from_prompt"].mean()
    return table.merge(extra.reset_index(), on="condition")


def amount_effects(frame: pd.DataFrame, probs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The expected amount under the model's own distribution (``number_readout: distribution``) per condition and its
    effect. Its unit is the persona, as a choice's: the distribution is read, not drawn, so a persona's seeds repeat
    it. Beside it ``amount_mass`` (the share of the distribution read as an amount in the range: a low one means the
    model was mostly not answering with one), ``top_amount`` (the amount of the largest mean probability) and
    ``amount_from_prompt`` (the share of the read amounts' probability on numbers the prompt wrote: an echo).
    ``probs``: ``amount_probabilities(frame)``, when the caller has it already."""
    table = effects(frame, "expected_number", ["persona_index", "arm", "seed"], ["persona_index"])
    probs = amount_probabilities(frame) if probs is None else probs
    top = (probs.sort_values("probability", ascending=False, kind="stable").drop_duplicates("condition")
           .set_index("condition")["amount"] if len(probs) else pd.Series(dtype=float))
    grouped = frame.groupby("condition", sort=False)
    extra = grouped["amount_mass"].mean().to_frame()
    extra["top_amount"] = top
    if "amount_from_prompt" in frame:
        extra["amount_from_prompt"] = grouped["amount_from_prompt"].mean()
    return table.merge(extra.reset_index(), on="condition")


def amount_probabilities(frame: pd.DataFrame) -> pd.DataFrame:
    """Long table (condition, amount, probability): each amount's probability averaged over the condition's trials
    (an amount a trial gave no mass counts as 0 there)."""
    rows: list[dict[str, Any]] = []
    read = frame[frame["amount_probs"].notna()] if "amount_probs" in frame else frame.iloc[0:0]
    for name, sub in read.groupby("condition", sort=False):
        grid = pd.DataFrame([{float(k): v for k, v in probs.items()} for probs in sub["amount_probs"]]).fillna(0.0)
        rows += [{"condition": name, "amount": amount, "probability": float(p)}
                 for amount, p in grid.mean().sort_index().items()]
    return pd.DataFrame(rows, columns=["condition", "amount", "probability"])


def subgroup_effects(frame: pd.DataFrame, by: str, column: str, cells: list[str], unit: list[str]
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per level, per condition): every condition's effect within each level of ``by`` (a column constant within a
    unit, such as a persona attribute), corrected across all of them; and per condition whether the effect differs
    between levels: the units' paired differences with the levels shuffled among units (``between_groups_p``),
    ``spread`` the largest minus the smallest level effect, corrected across the conditions."""
    levels = [effects(sub, column, cells, unit).assign(**{by: level})
              for level, sub in frame.groupby(by, sort=True) if sub[column].notna().any()]
    per_level = corrected(pd.concat(levels, ignore_index=True)) if levels else pd.DataFrame()
    rows = []
    for name, sub in frame[frame["condition"] != "control"].groupby("condition", sort=False):
        paired = _paired(frame, name, column, cells + ([by] if by not in cells else []))
        keep = paired[paired["diff"].notna()]
        per_unit = keep.groupby(units(keep, unit), sort=False).agg(diff=("diff", "mean"), level=(by, "first"))
        effects_here = per_level.loc[per_level["condition"] == name, "effect"] if len(per_level) else pd.Series()
        rows.append({"condition": name, "kind": sub["condition_kind"].iloc[0], "emotion": sub["emotion"].iloc[0],
                     "multiple": sub["multiple"].iloc[0], "n_units": len(per_unit),
                     "n_levels": int(per_unit["level"].nunique()),
                     "spread": float(effects_here.max() - effects_here.min()) if len(effects_here) else np.nan,
                     "p_value": between_groups_p(per_unit["diff"].to_numpy(), per_unit["level"].tolist())})
    return per_level, (corrected(pd.DataFrame(rows)) if rows else pd.DataFrame(rows))


def dose_response(table: pd.DataFrame) -> pd.DataFrame:
    """The steered conditions' effect against alpha (the control at alpha 0), one row per emotion x alpha."""
    control = table[table["kind"] == "control"]
    rows = []
    for emotion in table.loc[table["kind"] == "steered", "emotion"].drop_duplicates():
        for _, c in control.iterrows():
            rows.append({"emotion": emotion, "multiple": 0.0, "alpha": 0.0, "mean": c["mean"], "effect": 0.0,
                         "effect_low": 0.0, "effect_high": 0.0})
        steered = table[(table["kind"] == "steered") & (table["emotion"] == emotion)]
        for _, s in steered.iterrows():
            rows.append({k: s[k] for k in ("emotion", "multiple", "alpha", "mean", "effect", "effect_low", "effect_high")})
    return pd.DataFrame(rows).sort_values(["emotion", "multiple"], ignore_index=True) if rows else pd.DataFrame()


def _effect_ci(row: Any) -> str:
    """An effect's 95% CI as text: ``[+0.100, +0.300]``."""
    return f"[{row['effect_low']:+.3f}, {row['effect_high']:+.3f}]"


def sign_check(table: pd.DataFrame, held: float = 0.05) -> pd.DataFrame:
    """Per emotion and alpha steered with both signs: the effect toward the emotion (``+alpha``) and away from it
    (``-alpha``). A direction that acts as the emotion moves the outcome opposite ways; two effects of the same sign
    are what a push of that size does whatever its direction (``verdict``: ``opposite``, ``same sign`` where both
    hold after the table's correction, ``p_holm`` < ``held``, else ``unclear``)."""
    rows = []
    steered = table[table["kind"] == "steered"]
    for emotion, sub in steered.groupby("emotion", sort=False):
        by_multiple = {float(r["multiple"]): r for r in sub.to_dict("records")}
        for multiple in sorted(m for m in by_multiple if m > 0 and -m in by_multiple):
            toward, away = by_multiple[multiple], by_multiple[-multiple]
            signs = np.sign([toward["effect"], away["effect"]])
            both = all(r.get("p_holm", np.nan) < held for r in (toward, away))
            verdict = ("opposite" if signs[0] * signs[1] < 0 else "same sign" if both and signs[0] != 0
                       else "unclear")
            rows.append({"emotion": emotion, "multiple": multiple, "toward": toward["effect"],
                         "toward_ci": _effect_ci(toward), "away": away["effect"], "away_ci": _effect_ci(away),
                         "p_holm_toward": toward.get("p_holm", np.nan), "p_holm_away": away.get("p_holm", np.nan),
                         "verdict": verdict})
    return pd.DataFrame(rows)


def steered_vs_prompted(table: pd.DataFrame) -> pd.DataFrame:
    """Per emotion: the prompted effect beside the steered and steered+prompted effects at each alpha."""
    rows = []
    for emotion in table["emotion"].dropna().drop_duplicates():
        sub = table[table["emotion"] == emotion]
        prompted = sub[sub["kind"] == "prompted"]
        for multiple in sorted(sub.loc[sub["kind"] != "prompted", "multiple"].drop_duplicates()) or [np.nan]:
            row = {"emotion": emotion, "multiple": multiple}
            for kind, part in (("prompted", prompted), ("steered", sub[(sub["kind"] == "steered") & (sub["multiple"] == multiple)]),
                               ("steered+prompted", sub[(sub["kind"] == "steered+prompted") & (sub["multiple"] == multiple)])):
                if len(part):
                    p = part.iloc[0]
                    row[kind] = p["effect"]
                    row[f"{kind}_ci"] = _effect_ci(p)
            rows.append(row)
    return pd.DataFrame(rows)


def contagion(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(overall, per turn): the unseeded agents' judged emotion against the control, and the seeded agents' beside.

    The emotion judged is each condition's own; a reply is paired with the control's reply of the same
    replicate, agent and turn. ``copied`` (beside the control's) is the mean share of a reply's word
    trigrams found in what the agent read: an emotion can spread into new words or by being copied. The unit resampled is the replicate (one conversation) when there are
    two or more; with one, the agent (turns of one agent stay together), and ``ci_unit`` says so:
    agents of one conversation are not independent, so that CI is a within-run one.
    """
    overall, by_turn = [], []
    unit = ["replicate"] if frame["replicate"].nunique() >= 2 else ["agent"]
    for name, sub in frame[frame["condition"] != "control"].groupby("condition", sort=False):
        emotion = sub["emotion"].iloc[0]
        column = f"judged_{emotion}"
        if column not in frame:
            continue
        for seeded in (False, True):
            part = frame[frame["seeded"] == seeded]
            paired = _paired(part, name, column, ["replicate", "agent", "turn"])
            if paired.empty:
                continue
            eff, low, high = bootstrap_mean(paired["diff"], units(paired, unit))
            base = {"condition": name, "kind": sub["condition_kind"].iloc[0], "emotion": emotion,
                    "multiple": sub["multiple"].iloc[0], "agents": "seeded" if seeded else "unseeded"}
            copied = _paired(part, name, "copied", ["replicate", "agent", "turn"]) if "copied" in part else None
            overall.append({**base, "n_pairs": len(paired), "ci_unit": unit[0],
                            "n_units": len(set(units(paired, unit))), "judged": float(paired["value"].mean()),
                            "control": float(paired["control"].mean()), "effect": eff, "effect_low": low,
                            "effect_high": high, "p_value": paired_p(paired, unit),
                            "copied": float(copied["value"].mean()) if copied is not None else np.nan,
                            "copied_control": float(copied["control"].mean()) if copied is not None else np.nan})
            for turn, at in paired.groupby("turn"):
                t_eff, t_low, t_high = bootstrap_mean(at["diff"], units(at, unit))
                by_turn.append({**base, "turn": int(turn), "effect": t_eff, "effect_low": t_low, "effect_high": t_high})
    overall_frame = pd.DataFrame(overall)
    # seeded agents are the manipulation check, unseeded ones the question: each its own family
    return (corrected(overall_frame, family="agents") if len(overall_frame) else overall_frame), pd.DataFrame(by_turn)
