"""Specs, the design they multiply into, the state rule, the statistics and the trial log: no server needed."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest

from emolab.simulate import analysis
from emolab.simulate.agents import next_level, trajectory
from emolab.simulate.design import arms, conditions, sampling_kwargs, trials
from emolab.simulate.log import RunLog, RunLogError, read_trials
from emolab.simulate.spec import ExperimentSpec, SpecError, StateSpec, shipped_specs

EMOTIONS = ["anger", "joy", "sadness", "disgust", "fear", "surprise"]
RECOMMENDED = {"anger": 0.36, "joy": 0.36, "sadness": 0.19, "disgust": 0.28, "fear": 0.33, "surprise": 0.21}
CHOICE = {
    "name": "t", "kind": "choice", "prompt": "Pick.\n{options}\nLetter only.",
    "options": {"safe": "Take $50.", "gamble": "Flip for $120."}, "outcome": "safe",
    "personas": ["p1", "p2"], "system": "You are {persona}.",
    "conditions": {"emotions": ["fear", "anger"], "alphas": [1, -2]},
}


def test_every_shipped_spec_loads():
    names = set(shipped_specs())
    assert {"risk", "ultimatum", "dictator", "trust", "contagion"} <= names
    for name in names:
        assert ExperimentSpec.load(name).name == name


@pytest.mark.parametrize("change, field", [
    ({"kind": "poll"}, "kind"),
    ({"options": {"only": "one"}}, "options"),
    ({"labels": ["A", "A"]}, "labels"),
    ({"outcome": "nothing"}, "outcome"),
    ({"prompt": "no placeholder"}, "prompt"),
    ({"conditions": {"alphas": [1, "big"]}}, "conditions.alphas[1]"),
    ({"conditions": {"alphas": [0]}}, "conditions.alphas[0]"),
    ({"conditions": {"alpha_unit": "huge"}}, "conditions.alpha_unit"),
    ({"conditions": {"emotions": []}}, "conditions.emotions"),
    ({"conditions": {"colour": "red"}}, "conditions.colour"),
    ({"sampling": {"top_logprobs": 50}}, "sampling.top_logprobs"),
    ({"sampling": {"max_tokens": True}}, "sampling.max_tokens"),
    ({"seeds": [1, 1]}, "seeds"),
    ({"keywords": {"other": ["x"]}}, "keywords.other"),
    ({"extra": 1}, "extra"),
    ({"personas": None}, "personas"),
    ({"answer_prefix": "   "}, "answer_prefix"),
    ({"answer_prefix": "I choose option "}, "answer_prefix"),  # the next token brings its own space
    ({"answer_prefix": 5}, "answer_prefix"),
])
def test_a_bad_spec_names_its_field(change, field):
    data = {**CHOICE, **change}
    if change.get("personas", 0) is None:
        data.pop("personas")
    with pytest.raises(SpecError) as err:
        ExperimentSpec.from_dict(data)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


def test_seeds_that_would_only_copy_requests_are_refused():
    """At temperature 0 a seed changes nothing a request asks; copies would pass as independent replicates."""
    from emolab.simulate.agents import Conversation, agent_messages

    with pytest.raises(SpecError, match="at temperature 0 every seed sends the same requests") as err:
        ExperimentSpec.from_dict({**CHOICE, "seeds": [0, 1]})
    assert err.value.field == "seeds"
    sampled = ExperimentSpec.from_dict({**CHOICE, "seeds": [0, 1], "sampling": {"temperature": 0.7}})
    greedy = ExperimentSpec.from_dict(CHOICE)
    conds = conditions(greedy, EMOTIONS, RECOMMENDED)
    assert sampled.seeds == (0, 1) and len(trials(sampled, conds)) == 2 * len(trials(greedy, conds))

    chat = ExperimentSpec.load("contagion")  # 6 agents, 4 personas that rotate from one replicate to the next
    rotations = len(chat.agents.personas)
    assert chat.with_overrides(seeds=list(range(rotations))).seeds == tuple(range(rotations))
    with pytest.raises(SpecError, match=f"rotation of the {rotations} agent personas") as err:
        chat.with_overrides(seeds=list(range(rotations + 1)))
    assert err.value.field == "seeds"
    # the premise: greedy, replicate r + P is sent exactly what replicate r is, agent by agent
    control = conditions(chat, EMOTIONS, RECOMMENDED)[0]
    first, again = Conversation(control, 0), Conversation(control, rotations)
    assert all(agent_messages(chat, first, a) == agent_messages(chat, again, a) for a in range(chat.agents.count))
    assert any(agent_messages(chat, first, a) != agent_messages(chat, Conversation(control, 1), a)
               for a in range(chat.agents.count))
    nine = chat.with_overrides(seeds=list(range(9)), temperature=0.8)  # sampled: each seed its own conversation
    assert nine.sampling.temperature == 0.8 and nine.source["sampling"]["temperature"] == 0.8
    with pytest.raises(SpecError, match="must be 0..2") as err:
        chat.with_overrides(temperature=2.5)
    assert err.value.field == "sampling.temperature"


def test_a_bad_spec_file_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nkind: number\nprompt: How much?\nrange: [10, 1]\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: range: must be \[low, high\]"):
        ExperimentSpec.load(path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(SpecError, match="broken.json: not valid JSON"):
        ExperimentSpec.load(tmp_path / "broken.json")
    with pytest.raises(SpecError, match="no shipped experiment"):
        ExperimentSpec.load("no-such-spec")


def test_conditions_control_steered_prompted_both():
    spec = ExperimentSpec.from_dict(CHOICE)
    conds = conditions(spec, EMOTIONS, RECOMMENDED)
    assert [c.name for c in conds] == [
        "control", "prompted:fear", "steered:fear@1", "steered+prompted:fear@1", "steered:fear@-2",
        "steered+prompted:fear@-2", "prompted:anger", "steered:anger@1", "steered+prompted:anger@1",
        "steered:anger@-2", "steered+prompted:anger@-2"]
    by_name = {c.name: c for c in conds}
    assert by_name["steered:fear@-2"].steering() == {"fear": -0.66}  # -2 x the recommended 0.33
    assert by_name["prompted:fear"].steering() is None and by_name["control"].steering() is None
    with pytest.raises(SpecError, match="recommends no alpha for 'fear'"):
        conditions(spec, EMOTIONS, {})
    raw = ExperimentSpec.from_dict({**CHOICE, "conditions": {"emotions": ["fear"], "alphas": [0.5], "alpha_unit": "raw"}})
    assert conditions(raw, EMOTIONS, {})[2].steering() == {"fear": 0.5}
    with pytest.raises(SpecError, match="has no 'fear'"):
        conditions(spec, ["anger", "joy"], RECOMMENDED)


def test_counterbalanced_arms_separate_label_from_position():
    spec = ExperimentSpec.from_dict({**CHOICE, "options": {"x": "X", "y": "Y", "z": "Z"}, "outcome": "x"})
    full = arms(spec)
    assert len(full) == 6
    for option in "xyz":  # each option is shown first, and labelled A, equally often
        assert sum(a.order[0] == option for a in full) == 2
        assert sum(a.label_to_option["A"] == option for a in full) == 2
    # and "A" is not always the first position: the label can be told apart from the position
    assert {a.labels[0] for a in full} == {"A", "C"}
    assert len(arms(ExperimentSpec.from_dict({**CHOICE, "counterbalance": "order"}))) == 2
    assert len(arms(ExperimentSpec.from_dict({**CHOICE, "counterbalance": "none"}))) == 1


def test_an_answer_prefix_begins_every_reply_and_asks_the_server_to_continue_it():
    plain = ExperimentSpec.from_dict(CHOICE)
    spec = ExperimentSpec.from_dict({**CHOICE, "answer_prefix": "As {persona}, I choose option"})
    for trial in trials(spec, conditions(spec, EMOTIONS, RECOMMENDED)):
        *head, last = trial.messages
        assert last == {"role": "assistant", "content": f"As p{trial.persona_index + 1}, I choose option"}
        assert [m["role"] for m in head] == ["system", "user"]
    assert sampling_kwargs(spec, 0, True)["extra_body"] == {"continue_final_message": True,
                                                            "add_generation_prompt": False}
    assert "extra_body" not in sampling_kwargs(plain, 0, True)
    assert all(len(t.messages) == 2 for t in trials(plain, conditions(plain, EMOTIONS, RECOMMENDED)))
    assert spec.digest() != plain.digest()
    # a spec without it hashes as it did before the field existed: its run folders are still resumed
    later = ("source", "answer_prefix", "number_readout", "distribution_floor")  # fields added since
    before = {k: v for k, v in json.loads(json.dumps(asdict(plain))).items() if k not in later}
    assert plain.digest() == hashlib.sha256(json.dumps(before).encode()).hexdigest()
    # the override sets, replaces or removes it (the shipped dictator begins "I give $")
    assert spec.with_overrides(answer_prefix="").digest() == plain.digest()
    assert plain.with_overrides(answer_prefix="As {persona}, I choose option") == spec
    dictator = ExperimentSpec.load("dictator")
    assert dictator.answer_prefix == "I give $" and dictator.number_readout == "distribution"
    assert dictator.with_overrides(answer_prefix="", number_readout="text").answer_prefix == ""
    talk = {"name": "c", "kind": "conversation", "opening": "Hi.", "answer_prefix": "I say"}
    with pytest.raises(SpecError, match="only choice and number experiments have answer_prefix") as err:
        ExperimentSpec.from_dict(talk)
    assert err.value.field == "answer_prefix"


NUMBER = {"name": "n", "kind": "number", "prompt": "How many dollars? A number.", "range": [0, 100],
          "answer_prefix": "I give $"}


@pytest.mark.parametrize("change, field, message", [
    ({"number_readout": "both"}, "number_readout", "must be text or distribution"),
    ({"number_readout": "distribution", "answer_prefix": None}, "number_readout", "give an answer_prefix"),
    ({"number_readout": "distribution", "sampling": {"top_logprobs": 0}}, "sampling.top_logprobs", "at least 1"),
    ({"distribution_floor": 0}, "distribution_floor", "must be in (0, 0.5)"),
    ({"distribution_floor": True}, "distribution_floor", "got a boolean"),
])
def test_a_bad_number_readout_names_its_field(change, field, message):
    data = {k: v for k, v in {**NUMBER, **change}.items() if v is not None}
    with pytest.raises(SpecError, match=re.escape(message)) as err:
        ExperimentSpec.from_dict(data)
    assert err.value.field == field


def test_the_distribution_readout_is_a_number_field_that_leaves_old_digests_alone():
    plain = ExperimentSpec.from_dict(NUMBER)
    spec = ExperimentSpec.from_dict({**NUMBER, "number_readout": "distribution", "distribution_floor": 0.01})
    assert (spec.number_readout, spec.distribution_floor) == ("distribution", 0.01)
    assert "number_readout" not in plain.to_dict() and spec.to_dict()["number_readout"] == "distribution"
    assert plain.with_overrides(number_readout="distribution") == ExperimentSpec.from_dict(
        {**NUMBER, "number_readout": "distribution"})
    reading = ExperimentSpec.from_dict({**NUMBER, "number_readout": "distribution"})
    with pytest.raises(SpecError, match="needs the begun reply; add --number-readout text") as err:
        reading.with_overrides(answer_prefix="")  # removing the prefix it needs: the override's flag is named
    assert err.value.field == "answer_prefix"
    assert reading.with_overrides(answer_prefix="", number_readout="text") == ExperimentSpec.from_dict(
        {k: v for k, v in NUMBER.items() if k != "answer_prefix"} | {"number_readout": "text"})
    for data in (CHOICE, {"name": "c", "kind": "conversation", "opening": "Hi."}):
        with pytest.raises(SpecError, match="only number experiments have number_readout"):
            ExperimentSpec.from_dict({**data, "number_readout": "distribution"})
    with pytest.raises(SpecError, match="only number experiments have number_readout"):
        ExperimentSpec.from_dict(CHOICE).with_overrides(number_readout="text")


def test_trials_render_prompts_and_are_shuffled_reproducibly():
    spec = ExperimentSpec.from_dict(CHOICE)
    conds = conditions(spec, EMOTIONS, RECOMMENDED)
    first, again = trials(spec, conds), trials(spec, conds)
    assert len(first) == len(conds) * 2 * 4 and [t.trial_id for t in first] == [t.trial_id for t in again]
    assert len({t.trial_id for t in first}) == len(first)
    assert [t.condition.name for t in first[:len(conds)]] != [c.name for c in conds]  # not in design order
    prompted = next(t for t in first if t.condition.name == "prompted:fear" and t.arm_index == 3 and t.persona_index == 1)
    assert prompted.messages[0]["content"].startswith("You are p2. Right now you feel very afraid")
    assert prompted.messages[1]["content"] == "Pick.\nB. Flip for $120.\nA. Take $50.\nLetter only."


def test_state_rule_on_a_hand_computed_trajectory():
    state = StateSpec(rule="decay", baseline=0.0, decay=0.5, gain=2.0, reference=0.2, low=-1.0, high=1.5)
    # 1.0 -> 0.5*1.0 + 2*(0.5-0.2)=1.1 -> 0.55 + 2*(0.2-0.2)=0.55 -> 0.275 + 2*(0.0-0.2)=-0.125 -> clipped high
    levels = trajectory(state, 1.0, [0.5, 0.2, 0.0, 1.0])
    assert levels == pytest.approx([1.0, 1.1, 0.55, -0.125, 1.5])
    assert next_level(StateSpec(rule="fixed"), 0.7, 0.9) == 0.7
    assert next_level(state, -1.0, 0.0) == pytest.approx(-0.9)  # -0.5 + 2 * (0 - 0.2)
    assert next_level(replace(state, reference=0.6), -1.0, 0.0) == -1.0  # -1.7, clipped low


def test_bootstrap_mean_exact_cases():
    mean, low, high = analysis.bootstrap_mean([0.25])
    assert mean == 0.25 and np.isnan(low) and np.isnan(high)  # one unit: no interval, not a zero-width one
    assert analysis.bootstrap_mean([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    mean, low, high = analysis.bootstrap_mean([0.0, 1.0] * 50)
    assert mean == 0.5 and 0.39 < low < 0.5 < high < 0.61
    # clusters: the mean of cluster means, resampled whole
    assert analysis.bootstrap_mean([1, 1, 1, 0], ["a", "a", "a", "b"])[0] == 0.5
    assert analysis.bootstrap_mean([1, 0, 1, 0], ["a", "a", "b", "b"]) == (0.5, 0.5, 0.5)  # both units mean 0.5
    mean, low, high = analysis.bootstrap_mean([1, 0, 1, 0], ["a", "b", "a", "b"])
    assert (mean, low, high) == (0.5, 0.0, 1.0)
    assert np.isnan(analysis.bootstrap_mean([float("nan")])[0])


def _record(condition, kind, arm, order, labels, p_safe, persona=0, emotion="fear", parsed="safe"):
    return {"trial_id": f"{condition}-{arm}-{persona}", "experiment": "t", "kind": "choice", "condition": condition,
            "condition_kind": kind, "emotion": None if kind == "control" else emotion, "multiple": 0.0 if kind == "control" else 1.0,
            "alpha": 0.0, "persona_index": persona, "arm": arm, "seed": 0, "order": order, "labels": labels,
            "option_probs": {"safe": p_safe, "gamble": 1 - p_safe}, "label_mass": 0.9, "parsed_choice": parsed}


def test_choice_effects_order_corrected_with_label_bias_apart():
    # A model that likes the label "A" by 0.2 whatever it means; fear adds 0.1 to P(safe).
    arms_ = [(["safe", "gamble"], ["A", "B"]), (["gamble", "safe"], ["A", "B"]),
             (["safe", "gamble"], ["B", "A"]), (["gamble", "safe"], ["B", "A"])]
    records = []
    for condition, kind, shift in (("control", "control", 0.0), ("steered:fear@1", "steered", 0.1)):
        for persona in (0, 1):
            for arm, (order, labels) in enumerate(arms_):
                safe_is_a = dict(zip(labels, order, strict=True))["A"] == "safe"
                records.append(_record(condition, kind, arm, order, labels,
                                       0.5 + (0.2 if safe_is_a else -0.2) + shift + 0.05 * persona, persona))
    table = analysis.choice_effects(analysis.trials_frame(records), "safe", 2).set_index("condition")
    assert table.loc["control", "mean"] == pytest.approx(0.525)  # persona means 0.5 and 0.55
    assert table.loc["control", "n_units"] == 2 and table.loc["control", "n"] == 8
    assert table.loc["steered:fear@1", "mean"] == pytest.approx(0.625)
    assert table.loc["steered:fear@1", "effect"] == pytest.approx(0.1)
    assert table.loc["steered:fear@1", "effect_low"] == pytest.approx(0.1)  # the same shift in every cell
    assert table.loc["steered:fear@1", "effect_high"] == pytest.approx(0.1)
    assert table.loc["control", "label_bias"] == pytest.approx(0.2)
    assert table.loc["control", "position_bias"] == pytest.approx(0.0)
    assert table.loc["control", "uncorrected"] == pytest.approx(0.725)  # arm 0 alone: safe shown first as A
    assert table.loc["control", "chose_outcome"] == 1.0 and table.loc["control", "unparseable"] == 0
    # Two units that agree exactly: a zero-width interval, yet two units cannot show an effect (exact p = 2/4)
    assert table.loc["steered:fear@1", "p_value"] == 0.5 and table.loc["steered:fear@1", "p_holm"] == 0.5
    assert np.isnan(table.loc["control", "p_value"]) and np.isnan(table.loc["control", "p_holm"])


def test_effects_carry_permutation_p_values_corrected_across_the_experiment():
    from emolab.core.stats import benjamini_hochberg, holm, sign_flip_p

    rng = np.random.default_rng(3)
    arms_ = [(["safe", "gamble"], ["A", "B"]), (["gamble", "safe"], ["A", "B"])]
    shifts = {"control": 0.0, "steered:fear@1": 0.12, "steered:anger@1": 0.0, "prompted:fear": 0.03}
    records, truth = [], {}
    for persona in range(12):  # 12 independent units: the exact test enumerates 4,096 sign patterns
        noise = {name: rng.normal(0, 0.05) for name in shifts}
        for condition, shift in shifts.items():
            kind = condition.split(":")[0]
            emotion = "anger" if "anger" in condition else "fear"
            for arm, (order, labels) in enumerate(arms_):
                records.append(_record(condition, kind, arm, order, labels, 0.4 + shift + noise[condition],
                                       persona, emotion))
            truth.setdefault(condition, []).append(shift + noise[condition] - noise["control"])
    table = analysis.choice_effects(analysis.trials_frame(records), "safe", 2).set_index("condition")
    names = ["steered:fear@1", "steered:anger@1", "prompted:fear"]
    want = [sign_flip_p(truth[name]) for name in names]  # the per-unit differences, built by hand
    assert table.loc[names, "p_value"].tolist() == pytest.approx(want)
    assert table.loc["steered:fear@1", "p_value"] < 0.01  # a shift of 0.12 against noise of 0.07 per unit
    assert table.loc["steered:anger@1", "p_value"] > 0.05
    assert table.loc[names, "p_holm"].tolist() == pytest.approx(holm(want).tolist())  # the family: 3 comparisons
    assert table.loc[names, "q_bh"].tolist() == pytest.approx(benjamini_hochberg(want).tolist())
    assert (table.loc[names, "p_holm"] >= table.loc[names, "p_value"]).all()


def test_a_choice_counts_personas_not_seeds():
    """An option's probability is the model's distribution, not a draw: a persona's second seed (here its exact
    copy, as a greedy or first-token readout gives) adds no unit, and nothing of the table changes."""
    arms_ = [(["safe", "gamble"], ["A", "B"]), (["gamble", "safe"], ["A", "B"])]
    records = []
    for persona, noise in enumerate((0.02, -0.01, 0.04, 0.0)):
        for condition, shift in (("control", 0.0), ("steered:fear@1", 0.1 + noise)):
            for arm, (order, labels) in enumerate(arms_):
                records.append(_record(condition, condition.split(":")[0], arm, order, labels, 0.4 + shift, persona))
    copies = [{**r, "seed": 1, "trial_id": r["trial_id"] + "-s1"} for r in records]
    one = analysis.choice_effects(analysis.trials_frame(records), "safe", 2).set_index("condition")
    two = analysis.choice_effects(analysis.trials_frame(records + copies), "safe", 2).set_index("condition")
    assert two.loc["steered:fear@1", "n_units"] == one.loc["steered:fear@1", "n_units"] == 4
    assert two.loc["steered:fear@1", "n"] == 16
    for column in ("effect", "effect_low", "effect_high", "p_value"):
        assert two.loc["steered:fear@1", column] == pytest.approx(one.loc["steered:fear@1", column])
    assert two.loc["steered:fear@1", "p_value"] == 0.125  # 4 units: 2/16, not 8 units' 2/256


def test_a_logged_number_that_ran_into_the_cut_is_read_as_unparseable():
    """Logs written before the runner checked the cut: the frame applies the same rule to what they hold. Beside
    the number, whether it repeats one the prompt wrote (an echo of the endowment is not a decision)."""
    prompt = [{"role": "system", "content": "You are 30."},
              {"role": "user", "content": "You have $100. Give any part of it, from $0 to $100."}]

    def record(condition, reply, parsed, finish):
        kind = condition.split(":")[0]
        return {"trial_id": f"{condition}-{reply}", "kind": "number", "condition": condition, "condition_kind": kind,
                "emotion": None if kind == "control" else condition.split(":")[1].split("@")[0], "multiple": 1.0,
                "alpha": 0.0, "persona_index": 0, "arm": 0, "seed": 0, "reply": reply, "finish_reason": finish,
                "parsed_number": parsed, "messages": prompt}

    frame = analysis.trials_frame([
        record("control", "100", 100.0, "stop"),
        record("steered:disgust@1", "The number of dollars you give is 10", 10.0, "length"),
        record("steered:joy@1", "I give 40 dollars and keep the", 40.0, "length"),
        record("steered:fear@1", "It is 10", 10.0, "stop"),
    ]).set_index("condition")
    assert frame["parsed_number"].isna().tolist() == [False, True, False, False]
    assert frame.loc["steered:joy@1", "parsed_number"] == 40.0 and frame.loc["steered:fear@1", "parsed_number"] == 10.0
    # 30 is in the system prompt, not the user's: only the user's numbers count
    assert frame["from_prompt"].tolist()[:1] + frame["from_prompt"].tolist()[2:] == [1.0, 0.0, 0.0]
    assert np.isnan(frame.loc["steered:disgust@1", "from_prompt"])
    table = analysis.number_effects(frame.reset_index()).set_index("condition")
    assert table.loc["control", "from_prompt"] == 1.0 and table.loc["steered:disgust@1", "unparseable"] == 1


def test_dose_response_and_steered_vs_prompted_tables():
    table = pd.DataFrame([
        {"condition": "control", "kind": "control", "emotion": None, "multiple": 0.0, "alpha": 0.0, "mean": 0.5,
         "effect": 0.0, "effect_low": 0.0, "effect_high": 0.0},
        {"condition": "prompted:fear", "kind": "prompted", "emotion": "fear", "multiple": 0.0, "alpha": 0.0,
         "mean": 0.55, "effect": 0.05, "effect_low": 0.0, "effect_high": 0.1},
        {"condition": "steered:fear@2", "kind": "steered", "emotion": "fear", "multiple": 2.0, "alpha": 0.66,
         "mean": 0.7, "effect": 0.2, "effect_low": 0.1, "effect_high": 0.3},
        {"condition": "steered:fear@1", "kind": "steered", "emotion": "fear", "multiple": 1.0, "alpha": 0.33,
         "mean": 0.6, "effect": 0.1, "effect_low": 0.0, "effect_high": 0.2},
    ])
    dose = analysis.dose_response(table)
    assert dose["multiple"].tolist() == [0.0, 1.0, 2.0] and dose["effect"].tolist() == [0.0, 0.1, 0.2]
    svp = analysis.steered_vs_prompted(table).set_index("multiple")
    assert svp.loc[1.0, "prompted"] == 0.05 and svp.loc[2.0, "steered"] == 0.2
    assert svp.loc[2.0, "steered_ci"] == "[+0.100, +0.300]"


def test_the_sign_check_sets_toward_beside_away():
    def row(emotion, multiple, effect, p_holm):
        return {"condition": f"steered:{emotion}@{multiple:g}", "kind": "steered", "emotion": emotion,
                "multiple": multiple, "effect": effect, "effect_low": effect - 0.1, "effect_high": effect + 0.1,
                "p_holm": p_holm}

    table = pd.DataFrame([
        {"condition": "control", "kind": "control", "emotion": None, "multiple": 0.0, "effect": 0.0,
         "effect_low": 0.0, "effect_high": 0.0, "p_holm": np.nan},
        row("joy", 1.0, 0.5, 0.001), row("joy", -1.0, 0.4, 0.01),  # both up, both held: the push, not joy
        row("fear", 2.0, 0.3, 0.001), row("fear", -2.0, -0.2, 0.3), row("fear", 1.0, 0.1, 0.5),  # no -1: no row
        row("anger", 1.0, 0.2, 0.001), row("anger", -1.0, 0.1, 0.2),  # same sign, one not held
    ])
    check = analysis.sign_check(table)
    assert check[["emotion", "multiple", "verdict"]].values.tolist() == [
        ["joy", 1.0, "same sign"], ["fear", 2.0, "opposite"], ["anger", 1.0, "unclear"]]
    joy = check.iloc[0]
    assert (joy["toward"], joy["away"], joy["toward_ci"], joy["away_ci"]) == (0.5, 0.4, "[+0.400, +0.600]",
                                                                           "[+0.300, +0.500]")
    assert analysis.sign_check(table[table["multiple"] >= 0]).empty  # no emotion steered with both signs


def test_run_log_resumes_without_losing_or_repeating(tmp_path):
    spec = ExperimentSpec.from_dict(CHOICE)
    log = RunLog(tmp_path, spec, {"model": "m"})
    log.append({"trial_id": "a", "x": 1})
    log.append({"trial_id": "b", "x": 2})
    with pytest.raises(RunLogError):
        log.append({"trial_id": "a", "x": 3})
    log._handle.write('{"trial_id": "c", "x"')  # killed mid-write
    log._handle.flush()
    again = RunLog(tmp_path, spec)
    assert again.done == {"a", "b"}
    again.append({"trial_id": "c", "x": 3})
    again.close(finished=True)
    assert [r["trial_id"] for r in read_trials(tmp_path)] == ["a", "b", "c"]
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["spec_sha256"] == spec.digest() and len(meta["resumed"]) == 1 and meta["n_trials_logged"] == 3
    other = ExperimentSpec.from_dict({**CHOICE, "name": "other"})
    with pytest.raises(RunLogError, match="holds a run of another spec"):
        RunLog(tmp_path, other)


def test_prompts_with_other_braces_render_as_written():
    spec = ExperimentSpec.from_dict({**CHOICE, "system": 'You are {persona}. Reply as JSON: {"choice": "A"}.',
                                     "conditions": {"emotions": ["fear"], "alphas": [1],
                                                    "emotion_prompt": "You feel {adjective} {today}."}})
    prompted = next(t for t in trials(spec, conditions(spec, EMOTIONS, RECOMMENDED))
                    if t.condition.name == "prompted:fear" and t.persona_index == 0)
    assert prompted.messages[0]["content"] == 'You are p1. Reply as JSON: {"choice": "A"}. You feel afraid {today}.'


def test_the_report_says_when_the_design_cannot_show_an_effect():
    from emolab.simulate.report import design_note

    def table(units, m):
        return pd.DataFrame({"condition": ["control"] + [f"c{i}" for i in range(m)], "n_units": [units] * (m + 1),
                             "p_value": [np.nan] + [0.5] * m})

    assert "smallest p-value this design can give is 0.25, above 0.05" in design_note(table(3, 4))  # 3 replicates
    assert "across 30 comparisons Holm needs 0.00167" in design_note(table(8, 30))  # the risk run: 8 personas
    assert design_note(table(12, 3)) is None  # 2/4096 < 0.05/3: the design can show an effect
    assert design_note(table(8, 0)) is None  # nothing tested
    # units differ by row where replies are lost: the note counts the rows it binds, and judges Holm by the best
    mixed = pd.DataFrame({"condition": ["control", "a", "b", "c"], "n_units": [8, 8, 3, 2], "p_value": [np.nan, .5, .5, 1]})
    note = design_note(mixed)
    assert "2 of the 3 comparisons have too few independent units (as few as 2" in note
    assert "no effect here can be told from chance" not in note and "Holm" not in note  # 8 units: 2/256 < 0.05/3
    holm = pd.DataFrame({"condition": ["a"] * 30, "n_units": [8] * 29 + [2], "p_value": [.5] * 30})
    assert "1 of the 30 comparisons" in design_note(holm) and "across 30 comparisons Holm needs" in design_note(holm)
    many = pd.DataFrame({"condition": ["a", "b"], "n_units": [12, 3], "p_value": [.5, .5]})
    assert design_note(many) == ("**Design note**: 1 of the 2 comparisons have too few independent units (as few as "
                                 "3; replies lost as unparseable leave a row fewer) for any p-value below 0.05, "
                                 "whatever their effect.")
