"""Personas drawn from a population: distinct, reproducible, stable as the draw grows, each with its attributes;
every bad population field named; and the moderator test (``between_groups_p``) against exact enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from emolab.core.stats import between_groups_p
from emolab.simulate import ExperimentSpec, SpecError
from emolab.simulate.personas import population

CHOICE = {
    "name": "pick", "kind": "choice", "system": "You are {persona}.",
    "prompt": "Choose one.\n{options}\nAnswer with the letter only.",
    "options": {"safe": "Keep $5.", "gamble": "Flip a coin for $12."},
}
OWN = {"sample": 6, "seed": 3, "template": "a {role} who feels {mood}",
       "attributes": {"role": ["baker", "pilot", "judge"], "mood": ["calm", "restless"]}}


def spec(personas, **extra):
    return ExperimentSpec.from_dict({**CHOICE, "personas": personas, **extra})


def test_a_drawn_population_is_distinct_reproducible_and_keeps_each_persons_attributes():
    drawn = spec({"sample": 40, "seed": 7})
    assert len(drawn.personas) == len(set(drawn.personas)) == 40 == len(drawn.persona_attributes)
    assert drawn.personas == spec({"sample": 40, "seed": 7}).personas  # the same seed, the same people
    assert drawn.personas != spec({"sample": 40, "seed": 8}).personas
    everyday = population("everyday")
    assert everyday.size == 32 * 6 * 12 * 8
    for text, person in zip(drawn.personas, drawn.persona_attributes, strict=True):
        assert set(person) == {"occupation", "age", "situation", "temperament"}
        assert text == everyday.render(person) and all(value in text for value in person.values())
    # a spec's own population: every one of its 3 x 2 people, each once
    own = spec(OWN)
    assert sorted(own.personas) == sorted(f"a {r} who feels {m}" for r in ("baker", "pilot", "judge")
                                          for m in ("calm", "restless"))
    assert [f"a {p['role']} who feels {p['mood']}" for p in own.persona_attributes] == list(own.personas)
    # another template of the built-in attributes: only the attributes it names vary
    short = spec({"sample": 12, "template": "{occupation}, {temperament}"})
    assert all(set(p) == {"occupation", "temperament"} for p in short.persona_attributes)
    # the recorded spec holds the people drawn, so the digest changes with the draw
    assert spec({"sample": 5, "seed": 1}).to_dict()["personas"] == list(spec({"sample": 5, "seed": 1}).personas)
    assert spec({"sample": 5, "seed": 1}).digest() != spec({"sample": 5, "seed": 2}).digest()


def test_personas_n_means_the_same_people_whether_the_spec_lists_or_draws_them():
    drawn = spec({"sample": 8, "seed": 0})
    assert drawn.with_overrides(personas=3).personas == drawn.personas[:3]  # the first 3 of the larger draw
    bigger = drawn.with_overrides(personas=200)  # a population can be drawn past the spec's own sample
    assert bigger.personas[:8] == drawn.personas and len(set(bigger.personas)) == 200
    assert bigger.persona_attributes[:8] == drawn.persona_attributes
    listed = spec(["a nurse", "a cook", "a pilot"])
    assert listed.with_overrides(personas=2).personas == ("a nurse", "a cook")
    with pytest.raises(SpecError, match="personas: the spec has 3 personas, asked for 4"):
        listed.with_overrides(personas=4)


def test_conversation_agents_can_be_drawn_from_a_population():
    chat = ExperimentSpec.load("contagion")
    source = {**chat.source, "agents": {**chat.source["agents"], "personas": {"sample": 12, "seed": 1}}}
    drawn = ExperimentSpec.from_dict(source)
    assert len(set(drawn.agents.personas)) == 12 == len(drawn.agents.persona_attributes)


@pytest.mark.parametrize(("personas", "field", "message"), [
    ({"sample": 7, **{k: v for k, v in OWN.items() if k != "sample"}}, "personas.sample",
     "the population has 6 distinct people, asked for 7"),
    ({**OWN, "template": "a {role} in {city}"}, "personas.template", "{city} names no attribute (attributes: role, mood)"),
    ({**OWN, "template": "a {role}"}, "personas.attributes.mood", "the template does not use 'mood'"),
    ({**OWN, "template": "a {role!r} who feels {mood}"}, "personas.template", "a template field is a plain attribute"),
    ({**OWN, "template": "a {role:>9} who feels {mood}"}, "personas.template", "a template field is a plain attribute"),
    ({**OWN, "template": "plain words"}, "personas.template", "uses no attribute"),
    ({**OWN, "template": "a {role"}, "personas.template", "not a valid template"),
    ({k: v for k, v in OWN.items() if k != "template"}, "personas.template", "needs a template"),
    ({**OWN, "population": "everyday"}, "personas.population", "not both"),
    ({**OWN, "attributes": {"role": ["baker", "baker"], "mood": ["calm"]}}, "personas.attributes.role",
     "lists a value twice"),
    ({**OWN, "attributes": {"role": [], "mood": ["calm"]}}, "personas.attributes.role", "non-empty list"),
    ({**OWN, "attributes": {"role": ["baker", " "], "mood": ["calm"]}}, "personas.attributes.role[1]",
     "non-empty string"),
    ({**OWN, "template": "a {index} {mood}", "attributes": {"index": ["x"], "mood": ["calm"]}},
     "personas.attributes.index", "reserved"),
    ({"sample": 0}, "personas.sample", "must be 1..100000"),
    ({"sample": 3, "population": "nowhere"}, "personas.population", "no built-in population 'nowhere' (built-in: everyday)"),
    ({"sample": 3, "template": "{occupation} from {country}"}, "personas.template", "{country} names no attribute"),
    ({"sample": 3, "size": 2}, "personas.size", "unknown field"),
    ({"sample": True}, "personas.sample", "got a boolean"),
])
def test_a_bad_population_names_its_field(personas, field, message):
    with pytest.raises(SpecError, match="^" + field.replace("[", r"\[").replace("]", r"\]") + ": ") as err:
        spec(personas)
    assert message in str(err.value)


def _exact_between_groups_p(values, groups):
    """Every distinct assignment of the group labels to the units (the permutation distribution enumerated)."""
    values, groups = np.asarray(values, float), list(groups)

    def stat(labels):
        total = values.sum() ** 2 / values.size
        return sum(values[[i for i, g in enumerate(labels) if g == level]].sum() ** 2 / labels.count(level)
                   for level in set(labels)) - total

    observed = stat(groups)
    assignments = set(itertools.permutations(groups))
    return sum(stat(list(a)) >= observed - 1e-12 for a in assignments) / len(assignments)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_moderator_test_agrees_with_exact_enumeration(seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=8) + np.r_[np.zeros(4), np.full(4, 0.8 * seed)]
    groups = ["a"] * 4 + ["b"] * 2 + ["c"] * 2
    exact = _exact_between_groups_p(values, groups)
    sampled = between_groups_p(values, groups, n_shuffles=20_000)
    assert abs(sampled - exact) < 0.015, (sampled, exact)


def test_the_moderator_test_at_its_edges():
    apart = np.r_[np.zeros(8), np.ones(12)] + np.linspace(0, 0.01, 20)  # unequal groups: no mirror ties
    assert between_groups_p(apart, [0] * 8 + [1] * 12, n_shuffles=999) == 1 / 1000  # never 0
    assert between_groups_p(apart, [1] * 8 + [0] * 12) == between_groups_p(apart, ["x"] * 8 + ["y"] * 12)
    assert np.isnan(between_groups_p([1.0, 2.0, 3.0], ["a", "a", "a"]))  # one group: nothing to compare
    assert np.isnan(between_groups_p([1.0, 2.0], ["a", "b"]))  # a unit per group: no variation within
    assert between_groups_p([1.0, np.nan, 2.0, 1.5, 1.0], ["a", "b", "a", "b", "b"]) == between_groups_p(
        [1.0, 2.0, 1.5, 1.0], ["a", "a", "b", "b"])  # a unit with no value drops out
    assert between_groups_p(np.ones(12), ["a", "b", "c"] * 4) == 1.0  # no spread at all: every shuffle ties


def test_the_spec_digest_sees_the_options_order():
    """Arm 0 shows the options in the spec's order (and the first is the default outcome): reordered options are
    another experiment, so a run folder of one must not resume the other."""
    data = {**CHOICE, "outcome": "safe", "personas": ["a nurse"]}
    flipped = {**data, "options": dict(reversed(list(CHOICE["options"].items())))}
    assert ExperimentSpec.from_dict(data).digest() != ExperimentSpec.from_dict(flipped).digest()
    assert ExperimentSpec.from_dict(data).digest() == ExperimentSpec.from_dict(dict(data)).digest()


def test_the_moderator_test_does_not_depend_on_the_units_order():
    rng = np.random.default_rng(5)
    values, groups = rng.normal(size=15), list("abc" * 5)
    shuffle = rng.permutation(15)
    assert between_groups_p(values, groups) == between_groups_p(values[shuffle], [groups[i] for i in shuffle])
