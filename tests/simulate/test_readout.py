"""Exact tests of the readouts: option renormalization from top_logprobs, the parsed choice, the parsed number."""

from __future__ import annotations

import math

import pytest

from emolab.simulate.readout import (
    answer_position,
    copied_share,
    label_of_token,
    numbers_in,
    option_probabilities,
    parse_choice,
    parse_number,
    read_options,
)

LABELS = ("A", "B")


def lp(p: float) -> float:
    return math.log(p)


@pytest.mark.parametrize("token, label", [
    ("A", "A"), (" B", "B"), ("(B", "B"), ("B.", "B"), ("\u0120A", "A"), ("\u2581B", "B"), ("**A**", "A"),
    ("a", None), ("AB", None), ("I", None), (" ", None), ("", None),
])
def test_label_of_token_single_letters(token, label):
    assert label_of_token(token, LABELS) == label


def test_label_of_token_word_labels_and_unique_prefixes():
    labels = ("Accept", "Reject")
    assert label_of_token(" accept", labels) == "Accept"
    assert label_of_token("Acc", labels) == "Accept"
    assert label_of_token("Re", labels) == "Reject"
    assert label_of_token("R", labels) is None  # one character is no prefix evidence
    assert label_of_token("Re", ("Reject", "Return")) is None  # ambiguous prefix


def test_option_probabilities_sum_variants_and_renormalize():
    top = [{"token": "A", "logprob": lp(0.30)}, {"token": " A", "logprob": lp(0.10)},
           {"token": "B", "logprob": lp(0.20)}, {"token": "I", "logprob": lp(0.35)}]
    probs, mass = option_probabilities(top, LABELS)
    assert mass == pytest.approx(0.60)
    assert probs == pytest.approx({"A": 0.40 / 0.60, "B": 0.20 / 0.60})
    assert sum(probs.values()) == pytest.approx(1.0)


def test_option_probabilities_with_no_label_mass_is_none():
    assert option_probabilities([{"token": "I", "logprob": lp(0.9)}], LABELS) == (None, 0.0)
    probs, mass = option_probabilities([{"token": "B", "logprob": lp(0.5)}], LABELS)
    assert probs == {"A": 0.0, "B": 1.0} and mass == pytest.approx(0.5)


def test_read_options_uses_the_answer_position_and_the_sampled_token():
    content = [
        {"token": "I", "logprob": lp(0.6), "top_logprobs": [{"token": "I", "logprob": lp(0.6)}]},
        {"token": " choose", "logprob": lp(0.9), "top_logprobs": []},
        {"token": " B", "logprob": lp(0.5), "top_logprobs": [{"token": " A", "logprob": lp(0.25)}]},
    ]
    assert answer_position(content, LABELS) == 2
    readout = read_options(content, LABELS, "answer")
    # the sampled " B" was not in its own top list: it still counts
    assert readout.position == 2 and readout.mass == pytest.approx(0.75)
    assert readout.probs == pytest.approx({"A": 1 / 3, "B": 2 / 3})
    first = read_options(content, LABELS, "first")
    assert first.position == 0 and first.probs is None and first.mass == 0.0
    assert read_options(None, LABELS).probs is None


@pytest.mark.parametrize("text, choice", [
    ("B", "B"), ("A.", "A"), ("(B)", "B"), ("Option B", "B"), ("I choose A because it is safe.", "A"),
    ("B) A 50% chance", "B"), ("My answer is B", "B"), ("I would pick option A.", "A"), ("**B**", "B"),
    ("A sure gain is better than nothing", None), ("I am not sure.", None), ("", None),
])
def test_parse_choice_letters(text, choice):
    assert parse_choice(text, LABELS) == choice


def test_parse_choice_maps_labels_to_options_and_falls_back_to_keywords():
    mapping = {"A": "gamble", "B": "safe"}
    keywords = {"safe": ["for sure"], "gamble": ["gamble"]}
    assert parse_choice("B", LABELS, keywords, mapping) == "safe"
    assert parse_choice("I'd take the money for sure.", LABELS, keywords, mapping) == "safe"
    assert parse_choice("The gamble, obviously", LABELS, keywords, mapping) == "gamble"
    assert parse_choice("Either the gamble or the money for sure", LABELS, keywords, mapping) is None


@pytest.mark.parametrize("text, value", [
    ("40", 40.0), ("$40", 40.0), ("I give $1,000 today", 1000.0), ("40%", 40.0), ("0.4", 0.4),
    ("I would give 25 dollars and keep 75.", 25.0), ("-5", -5.0), ("none", None), ("", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_parse_number_out_of_range_is_unparseable():
    assert parse_number("150", 0, 100) is None
    assert parse_number("100", 0, 100) == 100.0


@pytest.mark.parametrize("text, cut, whole", [
    # SmolLM2's dictator replies cut at max_tokens=10: "... is 100" lost its last digit
    ("The number of dollars you give is 10", None, 10.0), ("You have been given a total of $10", None, 10.0),
    ("I give 1,0", None, 1.0), ("It is 10.", None, 10.0), ("It is 10.5", None, 10.5),
    # the number ends before the cut: it is whole either way
    ("I give 40 dollars and keep", 40.0, 40.0), ("40% of it, since", 40.0, 40.0), ("100, because the", 100.0, 100.0),
    ("$25.50 to the stranger", 25.5, 25.5), ("nothing to say about", None, None),
])
def test_a_number_that_runs_into_the_cut_is_unparseable(text, cut, whole):
    assert parse_number(text, 0, 100, cut=True) == cut
    assert parse_number(text, 0, 100) == whole  # a reply that stopped by itself is read as written


def test_numbers_in_reads_every_number_as_parse_number_does():
    prompt = "You have $10. You can send any whole number of dollars, from $0 to $1,000, or -5, or 2.5%."
    assert numbers_in(prompt) == [10.0, 0.0, 1000.0, -5.0, 2.5]
    assert numbers_in("no numbers here") == []


def test_copied_share_counts_word_trigrams_found_in_what_was_read():
    read = "Ana: The garden will close next month. Ben: I am so sad about it."
    assert copied_share("I am so sad about it.", read) == 1.0
    assert copied_share("What a lovely sunny day outside", read) == 0.0
    # "the garden will" / "garden will close" found; "will close soon" / "close soon friends" not
    assert copied_share("The garden will close soon friends", read) == 0.5
    assert copied_share("so sad", read) == 1.0 and copied_share("so happy", read) == 0.0  # shorter than n
    assert math.isnan(copied_share("...", read))
