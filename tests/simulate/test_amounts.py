"""Exact tests of the digit-tree walk (``number_readout: distribution``) on hand-written next-token tables.

Each table maps the text appended to the begun reply to the next token's alternatives, as a server's
``top_logprobs`` would give them; the expected probabilities are products along the digits, written out by hand.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from emolab.simulate.amounts import read_amounts, split_token


def table_ask(table: dict[str, dict[str, float]], asked: list[str]):
    async def ask(text: str):
        asked.append(text)
        return [{"token": t, "logprob": math.log(p)} for t, p in table[text].items()]
    return ask


def walk(table, low=0, high=100, **kwargs):
    asked: list[str] = []
    return asyncio.run(read_amounts(table_ask(table, asked), low, high, **kwargs)), asked


def test_amounts_are_products_along_the_digits_and_the_four_parts_sum_to_one():
    table = {
        "": {"1": 0.6, "5": 0.25, "n": 0.1},  # 0.05 beyond the top-k
        "1": {"0": 0.9, ".": 0.08},
        "1.": {"5": 0.5, " ": 0.5},  # "$1.5" or "$1. " (a full stop)
        "1.5": {" ": 1.0},
        "10": {"0": 0.7, " ": 0.3},
        "100": {".": 0.5, "0": 0.5},  # "1000" is above the range: not asked, outside
        "100.": {"\n": 1.0},
        "5": {"0": 1.0},
        "50": {",": 0.98},
    }
    dist, asked = walk(table)
    assert dist.probs == pytest.approx({1: 0.6 * 0.04, 1.5: 0.6 * 0.04, 10: 0.6 * 0.9 * 0.3,
                                        100: 0.6 * 0.9 * 0.7 * 0.5, 50: 0.25 * 0.98})
    assert dist.other == pytest.approx(0.1)
    assert dist.outside == pytest.approx(0.6 * 0.9 * 0.7 * 0.5)
    assert dist.unread == pytest.approx(0.05 + 0.6 * 0.02 + 0.25 * 0.02) == pytest.approx(dist.tail)
    assert dist.mass + dist.other + dist.outside + dist.unread == pytest.approx(1.0)
    assert dist.expected == pytest.approx(sum(v * p for v, p in dist.probs.items()) / dist.mass)
    assert sorted(asked) == ["", "1", "1.", "1.5", "10", "100", "100.", "5", "50"] and dist.requests == 9
    assert "1000" not in asked
    assert dist.mode == 50 and not dist.capped
    record = dist.to_record()
    assert list(record["probs"]) == ["1", "1.5", "10", "50", "100"]
    assert record["expected"] == pytest.approx(dist.expected)


def test_nodes_below_the_floor_are_not_asked_and_count_as_unread():
    table = {"": {"4": 0.996, "7": 0.004}, "4": {"0": 1.0}, "40": {"!": 1.0}}
    dist, asked = walk(table, floor=0.005)
    assert "7" not in asked and dist.probs == pytest.approx({40: 0.996}) and dist.unread == pytest.approx(0.004)
    assert dist.tail == 0.0  # every node asked was read whole: what is unread is the node not asked


def test_a_leading_space_counts_only_before_the_first_digit_and_tokens_may_hold_several_digits():
    table = {"": {" 12": 0.5, "3": 0.5}, " 12": {" 5": 1.0}, "3": {"00": 0.5, "5.": 0.5}, "300": {"\n": 1.0},
             "35.": {"!": 1.0}}
    dist, asked = walk(table, high=1000)
    # " 5" after "12" starts a new word: the amount was 12; "5." is "5" then a point, which here ends a sentence
    assert "35." in asked
    assert dist.probs == pytest.approx({12: 0.5, 300: 0.25, 35: 0.25})


def test_amounts_below_the_range_are_outside_and_the_cap_leaves_the_rest_unread():
    table = {"": {"0": 0.5, "2": 0.5}, "0": {",": 1.0}, "2": {"0": 1.0}, "20": {"!": 1.0}}
    dist, _ = walk(table, low=1)
    assert dist.probs == pytest.approx({20: 0.5}) and dist.outside == pytest.approx(0.5)
    capped, asked = walk(table, low=1, max_requests=2)
    assert asked == ["", "0"]  # the root and the first node of the next level; "2" is left unread
    assert capped.capped and capped.requests == 2 and capped.unread == pytest.approx(0.5)


@pytest.mark.parametrize("token, first, split", [
    ("4", True, ("4", "")), (" 4", True, ("4", "")), (" 4", False, None), ("40.", False, ("40", ".")),
    ("$", True, None), ("  4", True, None), ("", True, None), ("x4", False, None),
])
def test_split_token(token, first, split):
    assert split_token(token, first) == split
