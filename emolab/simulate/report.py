"""A run folder's analysis: ``analyze(folder)`` returns its frames; ``write_report`` writes report.md, CSVs and plots.

Every number of the report comes from one frame: the markdown tables (``emolab.core.tables.markdown_table``),
``tables/*.csv`` and the plots are all written from the same ``RunAnalysis`` tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from emolab.core.stats import smallest_p
from emolab.core.tables import markdown_table
from emolab.simulate import analysis, plots
from emolab.simulate.errors import SimulationError
from emolab.simulate.log import RUN_FILE, read_trials
from emolab.simulate.spec import ExperimentSpec

__all__ = ["RunAnalysis", "analyze", "design_note", "persona_attributes", "write_report"]


@dataclass
class RunAnalysis:
    spec: ExperimentSpec
    meta: dict[str, Any]
    trials: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    by: str | None = None  # the persona attribute the subgroup tables split by

    @property
    def outcome_label(self) -> str:
        if self.spec.kind == "choice":
            return f"P({self.spec.outcome})"
        if self.spec.kind == "number":
            return self.spec.outcome
        return "judged emotion"

    def figures(self) -> dict[str, Any]:
        """name -> Figure, for every table that has a plot."""
        figs: dict[str, Any] = {}
        if "effects" in self.tables:
            figs["effects"] = plots.condition_plot(self.tables["effects"], self.outcome_label)
        if len(self.tables.get("dose_response", ())):
            figs["dose_response"] = plots.dose_plot(self.tables["dose_response"], self.outcome_label)
        if len(self.tables.get("amounts", ())):
            figs["amounts"] = plots.condition_plot(self.tables["amounts"], f"expected {self.outcome_label}")
            figs["amount_distribution"] = plots.amount_plot(self.tables["amount_probabilities"], self.outcome_label)
        if self.spec.kind == "choice":
            figs["bias"] = plots.bias_plot(self.tables["effects"])
        if len(self.tables.get("contagion_by_turn", ())):
            figs["contagion"] = plots.contagion_plot(self.tables["contagion_by_turn"])
        if self.by and len(self.tables.get(f"by_{self.by}", ())):
            figs[f"by_{self.by}"] = plots.subgroup_plot(self.tables[f"by_{self.by}"], self.by, self.outcome_label)
        return figs


def persona_attributes(spec: ExperimentSpec) -> list[str]:
    """The attributes of a spec's personas (drawn from a population), each a ``persona_<name>`` trial column."""
    return list(spec.persona_attributes[0]) if spec.persona_attributes else []


def analyze(folder: str | Path, by: str | None = None) -> RunAnalysis:
    """The run's tables; ``by`` (a persona attribute) adds each effect per subgroup and the test of whether it
    differs between them (``by_<by>``, ``heterogeneity_<by>``)."""
    folder = Path(folder)
    meta = json.loads((folder / RUN_FILE).read_text())
    spec = ExperimentSpec.from_dict(meta["spec_source"])
    recorded = (meta.get("spec") or {}).get("outcome")
    if spec.kind == "choice" and recorded in spec.options and recorded != spec.outcome:
        # run.json of emolab before 2026-12-07 sorted its keys, options included, and the default outcome is the
        # first option: the outcome resolved when the run was made is the one recorded beside the source
        spec = ExperimentSpec.from_dict({**meta["spec_source"], "outcome": recorded})
    if by is not None and (spec.kind == "conversation" or by not in persona_attributes(spec)):
        known = ", ".join(persona_attributes(spec)) if spec.kind != "conversation" else ""
        raise SimulationError(f"--by {by}: the run's personas have no such attribute "
                              + (f"(they have: {known})" if known else "(its personas are not drawn from a population"
                                 " of a choice or number experiment)"))
    records = read_trials(folder)
    if spec.kind == "conversation":
        records = _judged(folder, records)
    frame = analysis.trials_frame(records)
    if spec.persona_attributes and "persona_index" in frame:
        people = pd.DataFrame(list(spec.persona_attributes)).add_prefix("persona_")
        frame = frame.merge(people.assign(persona_index=range(len(people))), on="persona_index", how="left")
    result = RunAnalysis(spec, meta, frame, by=by)
    if frame.empty:
        return result
    if spec.kind == "choice":
        table = analysis.choice_effects(frame, spec.outcome, len(spec.options))
    elif spec.kind == "number":
        table = analysis.number_effects(frame)
    else:
        overall, by_turn = analysis.contagion(frame)
        result.tables.update(contagion=overall, contagion_by_turn=by_turn)
        return result
    order = {c["name"]: i for i, c in enumerate(meta.get("conditions") or [])}  # the design's: control first

    def in_design_order(t: pd.DataFrame, *then: str) -> pd.DataFrame:
        return t.sort_values(["condition", *then], key=lambda s: s.map(order) if s.name == "condition" else s,
                             ignore_index=True, kind="stable")

    table = in_design_order(table)
    result.tables["effects"] = table
    if spec.kind == "number" and "expected_number" in frame and frame["expected_number"].notna().any():
        probs = analysis.amount_probabilities(frame)
        result.tables["amounts"] = in_design_order(analysis.amount_effects(frame, probs))
        result.tables["amount_probabilities"] = in_design_order(probs, "amount")
    result.tables["dose_response"] = analysis.dose_response(table)
    result.tables["steered_vs_prompted"] = analysis.steered_vs_prompted(table)
    for name, source in (("sign_check", "effects"), ("amounts_sign_check", "amounts")):
        if source in result.tables and len(check := analysis.sign_check(result.tables[source])):
            result.tables[name] = check
    if by is not None:
        per_level, spread = analysis.subgroup_effects(frame, f"persona_{by}", *analysis.outcome_design(
            spec.kind, spec.outcome))
        result.tables[f"by_{by}"] = in_design_order(per_level.rename(columns={f"persona_{by}": by}), by)
        result.tables[f"heterogeneity_{by}"] = in_design_order(spread)
    return result


def _judged(folder: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill in the judge's reading of replies logged without one (a run with no judge), cached in judged.jsonl."""
    missing = [r for r in records if not r.get("judged")]
    if not missing:
        return records
    cache_file = folder / "judged.jsonl"
    cache = {}
    if cache_file.is_file():
        cache = {d["trial_id"]: d["judged"] for d in map(json.loads, cache_file.read_text().splitlines()) if d}
    todo = [r for r in missing if r["trial_id"] not in cache]
    if todo:
        from emolab.evaluate.judge import load_or_train_judge
        from emolab.simulate.agents import judge_texts

        with open(cache_file, "a") as handle:
            for record, judged in zip(todo, judge_texts(load_or_train_judge(), [r["reply"] for r in todo]), strict=True):
                cache[record["trial_id"]] = judged
                handle.write(json.dumps({"trial_id": record["trial_id"], "judged": judged}) + "\n")
    return [r if r.get("judged") else {**r, "judged": cache[r["trial_id"]]} for r in records]


P_FORMAT = {"p_value": ".3g", "p_holm": ".3g"}
P_NOTE = ("`p_value`: sign-flip permutation test of the paired effect over the same independent units as its CI "
          "(exact up to 16 units); `p_holm`: adjusted across this table's comparisons (Holm, family-wise; "
          "`q_bh` in the CSV: Benjamini-Hochberg); for contagion, seeded and unseeded agents are separate families.")


def design_note(table: pd.DataFrame, alpha: float = 0.05) -> str | None:
    """What the design can show at all, comparison by comparison: with too few independent units the permutation
    test's smallest p (its floor) lies above ``alpha``, or above Holm's first threshold ``alpha / m`` across the
    table's ``m`` comparisons. Units differ between rows where replies are lost (unparseable), so the note counts
    the rows it binds; None when it binds none."""
    tested = table[table["p_value"].notna()] if "p_value" in table else table.iloc[0:0]
    if tested.empty:
        return None
    units = tested["n_units"].astype(int)
    m, most = len(tested), int(units.max())
    best = smallest_p(most)  # the floor falls with the units: the best-placed row's bounds every other row's
    if best > alpha:
        return (f"**Design note**: with at most {most} independent units per comparison the smallest p-value this "
                f"design can give is {best:.3g}, above {alpha}: no effect here can be told from chance, "
                "however large. More units (personas, seeds at temperature > 0, replicates) are the remedy.")
    parts = []
    if (few := int((units.map(smallest_p) > alpha).sum())):
        parts.append(f"{few} of the {m} comparisons have too few independent units (as few as {int(units.min())}; "
                     f"replies lost as unparseable leave a row fewer) for any p-value below {alpha}, whatever their "
                     "effect")
    if best * m > alpha:
        parts.append(f"with at most {most} independent units the smallest p-value is {best:.3g}; across "
                     f"{m} comparisons Holm needs {alpha / m:.3g}, so no effect can survive the family-wise "
                     "correction; the false-discovery `q_bh` still can")
    return f"**Design note**: {'; '.join(parts)}." if parts else None


def _subgroup_section(result: RunAnalysis, by: str) -> list[str]:
    spread = result.tables[f"heterogeneity_{by}"]
    per_level = result.tables[f"by_{by}"]
    levels = per_level[by].nunique() if len(per_level) else 0
    return [f"## Does the effect differ by {by}?", "",
            f"Each condition's effect within each of the {levels} levels of the personas' `{by}` "
            f"(`tables/by_{by}.csv`, with CIs and p-values corrected across all of them; the plot). Here: per "
            "condition, `spread` (largest minus smallest level effect) and `p_value`, a permutation test of "
            "\"every level has the same effect\" (the units' paired differences, levels shuffled among the units, "
            "5,000 times); `p_holm` across the conditions. Subgroups are small: a level with few units has a wide "
            "CI, and a spread among many levels is partly chance, which the test accounts for.", "",
            markdown_table(spread, ["condition", "n_units", "n_levels", "spread", "p_value", "p_holm"],
                           floatfmt=P_FORMAT), ""]


def _amounts_section(result: RunAnalysis) -> list[str]:
    amounts = result.tables["amounts"]
    lines = [f"## Expected {result.outcome_label} under the model's distribution per condition", "",
             "What the model *would* answer, not the one reply it wrote: every amount's probability read from "
             "the logprobs along the digits after the begun reply (`number_readout: distribution`), under the "
             "trial's steering; `mean`: the expected amount over the amounts in the range (renormalized), "
             "`amount_mass`: the share of the distribution read as such an amount (the rest: no number, out of "
             f"range, or below the floor {result.spec.distribution_floor:g} / outside the top "
             f"{result.spec.sampling.top_logprobs}); `top_amount`: the amount of largest mean probability; "
             "`amount_from_prompt`: the share of the read amounts' probability on numbers the prompt wrote (an "
             "echo, not a decision). The unit is the persona (the distribution is read, not drawn). Probabilities "
             "per amount: `tables/amount_probabilities.csv` and the plot.", "",
             markdown_table(_ci(_ci(amounts, "mean"), "effect"),
                            ["condition", "n", "n_units", "mean [95% CI]", "effect [95% CI]", "p_value", "p_holm",
                             "amount_mass", "top_amount"] + [c for c in ("amount_from_prompt",) if c in amounts],
                            floatfmt=P_FORMAT), ""]
    if note := design_note(amounts):
        lines += [note, ""]
    return lines


def _sign_section(result: RunAnalysis) -> list[str]:
    checks = [(name, result.tables[name]) for name in ("sign_check", "amounts_sign_check") if name in result.tables]
    if not checks:
        return []
    lines = ["## Does the direction matter? Toward and away from each emotion", "",
             "Each emotion steered at `+alpha` (toward) and `-alpha` (away), effects against the control. A direction "
             "that acts as the emotion moves the outcome opposite ways (`opposite`); effects of the same sign, both "
             "held after the correction (`same sign`), are what a push of that size does whatever its direction, "
             "and are not evidence of the emotion.", ""]
    for name, check in checks:
        if name == "amounts_sign_check":
            lines += [f"On the expected {result.outcome_label} (the model's distribution):", ""]
        lines += [markdown_table(check, ["emotion", "multiple", "toward", "toward_ci", "away", "away_ci",
                                         "p_holm_toward", "p_holm_away", "verdict"],
                                  floatfmt={"p_holm_toward": ".3g", "p_holm_away": ".3g"}), ""]
    return lines


def _ci(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """A ``<key> [95% CI]`` column: ``+0.029 [+0.014, +0.043]``; n/a where there is no number or no interval."""
    def cell(m: float, lo: float, hi: float) -> str:
        if m != m:
            return "n/a"
        return f"{m:+.3f} " + ("[n/a]" if lo != lo or hi != hi else f"[{lo:+.3f}, {hi:+.3f}]")

    out = frame.copy()
    out[f"{key} [95% CI]"] = [cell(m, lo, hi) for m, lo, hi in
                              zip(frame[key], frame[f"{key}_low"], frame[f"{key}_high"], strict=True)]
    return out


def write_report(folder: str | Path, output: str | Path | None = None, *, title: str | None = None,
                 by: str | None = None) -> Path:
    """``report.md`` (tables and linked plots), ``tables/*.csv`` and ``plots/*.png`` under ``output`` (default: the
    run folder); ``by``: a persona attribute to split every effect by (``analyze``)."""
    result = analyze(folder, by)
    out = Path(output or folder)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    spec, meta = result.spec, result.meta
    server = (meta.get("servers") or [{}])[-1]
    lines = [f"# {title or spec.name}", "", spec.description.strip(), ""]
    if spec.reference:
        lines += [f"Reference: {spec.reference}", ""]
    lines += [f"- model `{server.get('model')}` on the `{server.get('backend')}` backend; bundle sha256 "
              f"`{str(server.get('bundle_sha256'))[:16]}`; alpha scale {server.get('alpha_scale')}",
              f"- spec sha256 `{meta.get('spec_sha256', '')[:16]}`; {len(result.trials)} trials logged of "
              f"{meta.get('n_trials')}; sampling {spec.sampling.__dict__}"]
    if spec.answer_prefix:
        lines += [f"- every reply begins with the words `{spec.answer_prefix}`, written for the model, which "
                  "continues them: the answer's place is fixed, not its content"]
    lines += [""]
    for name, table in result.tables.items():
        table.to_csv(out / "tables" / f"{name}.csv", index=False)
    if result.trials.empty:
        lines.append("No trials logged yet.")
    elif spec.kind in ("choice", "number"):
        effects = _ci(_ci(result.tables["effects"], "mean"), "effect")
        columns = ["condition", "n", "n_units", "mean [95% CI]", "effect [95% CI]", "p_value", "p_holm"]
        if spec.kind == "choice":
            lines += [f"## {result.outcome_label}, order-corrected, per condition", "",
                      "`mean`: the probability of the option from the answer token's logprobs, renormalized over "
                      "the options and averaged over the counterbalanced arms; `effect`: paired against the control. "
                      "Beside it, never mixed in: `uncorrected` (arm 0 alone), the label and position biases, the "
                      "label mass (share of the answer distribution on the labels) and the parsed free-text choice.", ""]
            columns += ["uncorrected", "label_bias", "position_bias", "label_mass", "chose_outcome", "unparseable"]
        else:
            lines += [f"## {result.outcome_label} (parsed from the reply) per condition", ""]
            columns += ["unparseable"]
            if "from_prompt" in result.tables["effects"]:
                lines += ["`from_prompt`: the share of the parsed answers that repeat a number written in the prompt "
                          "(its endowment or bounds): a model that echoes the prompt writes these.", ""]
                columns += ["from_prompt"]
        lines += [P_NOTE, "", markdown_table(effects, columns, floatfmt=P_FORMAT), ""]
        if note := design_note(result.tables["effects"]):
            lines += [note, ""]
        if "amounts" in result.tables:
            lines += _amounts_section(result)
        lines += _sign_section(result)
        svp = result.tables["steered_vs_prompted"]
        if len(svp):
            lines += ["## Steered vs prompted (effect vs control)", "", markdown_table(svp), ""]
        if by is not None:
            lines += _subgroup_section(result, by)
        elif attributes := persona_attributes(spec):
            lines += [f"The personas were drawn from a population with attributes {', '.join(attributes)}: "
                      "`emolab simulate report --by ATTRIBUTE` splits every effect by one of them.", ""]
    else:
        overall = result.tables.get("contagion", pd.DataFrame())
        if len(overall):
            lines += ["## Contagion: judged emotion against the control", "",
                      "Each condition's own emotion, judged by the independent MiniLM judge on every reply; "
                      "`unseeded` agents carry no emotion themselves, so their effect is what spread through the "
                      "conversation. `copied`: the share of a reply's word trigrams found in what the agent read "
                      "(1 = a copy), beside the control's: an emotion can spread into new words, or by being "
                      "repeated.", "", markdown_table(_ci(overall, "effect"),
                      ["condition", "agents", "n_pairs", "ci_unit", "n_units", "judged", "control",
                       "effect [95% CI]", "p_value", "p_holm", "copied", "copied_control"], floatfmt=P_FORMAT),
                      "", P_NOTE, ""]
            if note := design_note(overall[overall["agents"] == "unseeded"]):
                lines += [note, ""]
    for name, fig in result.figures().items():
        fig.savefig(out / "plots" / f"{name}.png", dpi=110)
        lines += [f"![{name}](plots/{name}.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
