"""The model's probability of every amount a number experiment can be answered with (``number_readout: distribution``).

A reply is one draw; what the model *would* answer is a distribution, and an emotion can move it without moving
the answer greedy decoding writes (a dictator who gives $100 with probability 0.9 instead of 0.6 still writes
$100). With an ``answer_prefix`` that ends where the amount is written ("I give $"), the amount is spelt token by
token from there, so its probability is a product along a tree of digits::

    P(40) = P("4" | prefix) * P("0" | prefix "4") * P(the amount ends | prefix "40")

``read_amounts`` walks that tree breadth first: one request per node (``max_tokens: 1``, ``top_logprobs``), the
node's digits appended to the begun reply, under the trial's own steering, so every probability is the one the
trial's model computes. Where the mass goes:

- ``probs``: amounts in the range, whole or with a decimal point ("$4.50"; a point not followed by a digit is a
  full stop, "$40." is 40; a thousands comma ends the amount: write ranges below 1,000 or prompt for plain digits);
- ``outside``: numbers outside the range (a node above the range is not expanded: more digits only add);
- ``other``: replies that do not begin with a number ("I give nothing"; a minus sign too: negative amounts are
  not read);
- ``unread``: what the walk did not follow: nodes below ``floor`` and tokens outside the ``top_logprobs`` returned
  (``tail``, the second part: a larger k, not a lower floor, reads it).

The four sum to 1. ``expected`` is the mean amount under ``probs`` renormalized (the readout's headline); read it
with ``mass`` beside it, as a choice's option probabilities are read with their label mass. Probabilities are the
model's unprocessed ones (both backends report ``log_softmax`` of the raw logits), whatever the sampling
temperature. The prompt is re-tokenized at every node: for a tokenizer that merges digits (Llama 3), a path the
model would spell "1"+"00" is read as "100" spelt the canonical way.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_FLOOR", "Ask", "AmountDistribution", "read_amounts", "split_token"]

DEFAULT_FLOOR = 0.005  # nodes of the digit tree less likely than this are not asked (spec: distribution_floor)

# appended text -> the next token's top alternatives ([{"token", "logprob"}, ...]), the chosen one among them
Ask = Callable[[str], Awaitable[Sequence[Mapping[str, Any]]]]
_DIGITS = re.compile(r"(\d+)(.*)", re.DOTALL)


@dataclass(frozen=True)
class AmountDistribution:
    probs: dict[float, float]  # amount in the range -> probability (of the whole distribution)
    other: float  # the reply does not begin with a number
    outside: float  # a number outside the range
    unread: float  # below the floor, or outside the top-k
    requests: int  # how many nodes were asked (one request each)
    tail: float = 0.0  # the part of ``unread`` beyond the top-k of the nodes asked (the rest: nodes not asked)
    floor: float = 0.0
    capped: bool = False  # max_requests stopped the walk (what it left is unread)

    @property
    def mass(self) -> float:
        """The share of the model's distribution read as an amount in the range."""
        return float(sum(self.probs.values()))

    @property
    def expected(self) -> float | None:
        """The mean amount under ``probs`` renormalized; None when no mass fell in the range."""
        mass = self.mass
        return None if mass <= 0 else float(sum(v * p for v, p in self.probs.items()) / mass)

    @property
    def mode(self) -> float | None:
        return max(self.probs, key=self.probs.__getitem__) if self.probs else None

    def to_record(self) -> dict[str, Any]:
        """JSON for the trial log (amounts as string keys, in ascending order)."""
        return {"probs": {f"{v:g}": round(p, 8) for v, p in sorted(self.probs.items())}, "mass": round(self.mass, 8),
                "expected": None if self.expected is None else round(self.expected, 6),
                "other": round(self.other, 8), "outside": round(self.outside, 8), "unread": round(self.unread, 8),
                "tail": round(self.tail, 8), "requests": self.requests, "floor": self.floor, "capped": self.capped}


def split_token(token: str, first: bool) -> tuple[str, str] | None:
    """(digits, rest) of a token that begins with digits (at the first position one leading space may come
    before them: ``" 40"``), else None."""
    core = token[1:] if first and token[:1] == " " else token
    match = _DIGITS.fullmatch(core)
    return (match.group(1), match.group(2)) if match else None


def _value(amount: str) -> float:
    """The amount a node spells ("10." is 10: a point that ends it was a full stop)."""
    return float(amount.rstrip("."))


async def read_amounts(ask: Ask, low: float, high: float, *, floor: float = DEFAULT_FLOOR,
                       max_requests: int = 256) -> AmountDistribution:
    """The distribution over the amounts in ``[low, high]`` spelt after the begun reply (see the module).

    ``ask(text)``: the next token's alternatives after the begun reply plus ``text``. Nodes with probability below
    ``floor`` are not asked (their mass is ``unread``); at most ``max_requests`` nodes are.
    """
    probs: dict[float, float] = {}
    other = outside = unread = tail = 0.0
    level: list[tuple[str, str, float]] = [("", "", 1.0)]  # (amount so far, text appended, probability)
    requests = 0
    capped = False

    def end(amount: str, p: float) -> None:
        nonlocal outside
        value = _value(amount)
        if low <= value <= high:
            probs[value] = probs.get(value, 0.0) + p
        else:
            outside += p

    while level:
        asked, nxt = [], []
        for amount, text, p in level:
            if amount and _value(amount) > high:
                outside += p  # more digits only make it larger
            elif p < floor:
                unread += p
            elif requests + len(asked) >= max_requests:
                unread, capped = unread + p, True
            else:
                asked.append((amount, text, p))
        requests += len(asked)
        answers = await asyncio.gather(*(ask(text) for _, text, _ in asked))
        for (amount, text, p), top in zip(asked, answers, strict=True):
            seen = 0.0
            for entry in top:
                q = math.exp(float(entry["logprob"]))
                if not math.isfinite(q) or q <= 0:
                    continue
                seen += q
                token = str(entry["token"])
                split = split_token(token, first=not amount)
                pointed = "." in amount
                if split is None:
                    if token == "." and amount and not pointed:  # "10." may go on as "10.50" or end a sentence
                        nxt.append((amount + ".", text + token, p * q))
                    elif amount:  # no more digits: the amount ends here
                        end(amount, p * q)
                    else:  # the reply does not begin with a number
                        other += p * q
                elif not split[1]:
                    nxt.append((amount + split[0], text + token, p * q))
                elif split[1] == "." and not pointed:  # "5." in one token: as "5" then "."
                    nxt.append((amount + token[token.index(split[0]):], text + token, p * q))
                else:  # digits and something else in one token ("0," or "5!"): ends in it
                    end(amount + split[0], p * q)
            beyond = p * max(0.0, 1.0 - seen)  # the tail beyond the top-k
            unread, tail = unread + beyond, tail + beyond
        level = nxt
    return AmountDistribution(probs, other, outside, unread, requests, tail, floor, capped)
