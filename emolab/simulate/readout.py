"""Reading an answer out of a reply: option probabilities from ``top_logprobs``, the parsed choice, a number.

``option_probabilities`` is what the model *would* choose: at the answer position, the probability
mass on each option's label (every token that is the label, with or without a leading space or
bracket, adds), renormalized over the options. ``mass`` is the share of the whole distribution that
fell on the labels: a low mass means the model was not answering with a label there, and the
renormalized numbers then mean little (reports show it beside them).

``parse_choice`` is what the model *did* choose, from the free text: a label standing as an answer
("B", "Option B", "(B)", "B." or "I choose B"), else exactly one option's keywords; otherwise ``None``
(unparseable). ``parse_number`` reads the first number ("$40", "1,000", "40%", "0.4"); in a reply cut at
``max_tokens``, a number that runs to the cut may have lost digits ("... is 10" of "... is 100") and is unparseable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OptionReadout", "answer_position", "copied_share", "label_of_token", "numbers_in", "option_probabilities",
    "parse_choice", "parse_number", "read_options",
]

_STRIP = " \t\n\r\"'`*([{<:.)]}>,;!?-_\u2581\u0120"  # \u2581 / \u0120: sentencepiece / byte-level space marks


def label_of_token(token: str, labels: Sequence[str]) -> str | None:
    """The label a token spells (``" B"``, ``"(B"``, ``"B."`` -> ``"B"``), else None.

    Single-letter labels match only as written (``"a"`` is an English word, not label ``A``); longer
    labels match case-insensitively, and a token that is a prefix of exactly one of them (``"Acc"`` for
    ``"Accept"``; two characters at least) counts for it.
    """
    core = token.strip(_STRIP)
    if not core:
        return None
    for label in labels:
        if (len(label) == 1 and core == label) or (len(label) > 1 and core.casefold() == label.casefold()):
            return label
    if len(core) >= 2:
        starts = [label for label in labels if len(label) > 1 and label.casefold().startswith(core.casefold())]
        if len(starts) == 1:
            return starts[0]
    return None


@dataclass(frozen=True)
class OptionReadout:
    probs: dict[str, float] | None  # label -> probability renormalized over the labels; None: no mass at all
    mass: float  # share of the distribution on the labels, in [0, 1]
    position: int  # index of the generated token read


def option_probabilities(top: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> tuple[dict[str, float] | None, float]:
    """``top``: one position's ``top_logprobs`` (``[{"token", "logprob"}, ...]``). Returns (probs, mass)."""
    mass = dict.fromkeys(labels, 0.0)
    for entry in top:
        label = label_of_token(str(entry["token"]), labels)
        logprob = float(entry["logprob"])
        if label is not None and math.isfinite(logprob):
            mass[label] += math.exp(logprob)
    total = sum(mass.values())
    if total <= 0:
        return None, 0.0
    return {label: m / total for label, m in mass.items()}, min(total, 1.0)


def answer_position(content: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> int:
    """The first generated position whose token spells a label (the answer), else 0."""
    for i, entry in enumerate(content):
        if label_of_token(str(entry["token"]), labels) is not None:
            return i
    return 0


def read_options(content: Sequence[Mapping[str, Any]] | None, labels: Sequence[str], readout: str = "answer") -> OptionReadout:
    """Option probabilities from a chat reply's ``logprobs.content`` at the answer (or the first) position."""
    if not content:
        return OptionReadout(None, 0.0, -1)
    position = answer_position(content, labels) if readout == "answer" else 0
    entry = content[position]
    top = list(entry.get("top_logprobs") or [])
    if not any(t.get("token") == entry.get("token") for t in top):  # the sampled token counts even if not in the top k
        top.append({"token": entry["token"], "logprob": entry["logprob"]})
    probs, mass = option_probabilities(top, labels)
    return OptionReadout(probs, mass, position)


def parse_choice(text: str, labels: Sequence[str], keywords: Mapping[str, Sequence[str]] | None = None,
                 label_to_option: Mapping[str, str] | None = None) -> str | None:
    """The option a free-text reply chose (its id when ``label_to_option`` is given, else the label), or None."""
    mapping = dict(label_to_option or {label: label for label in labels})
    found = _label_in_text(text, labels)
    if found is not None:
        return mapping[found]
    if keywords:
        lowered = text.casefold()
        hits = [option for option, words in keywords.items()
                if any(re.search(rf"(?<!\w){re.escape(w.casefold())}(?!\w)", lowered) for w in words)]
        if len(hits) == 1:
            return hits[0]
    return None


def _label_in_text(text: str, labels: Sequence[str]) -> str | None:
    """The first label written as an answer; a lone capital "A" that starts a sentence ("A sure gain") is not one."""
    alternatives = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    flags = 0 if all(len(label) == 1 for label in labels) else re.IGNORECASE
    patterns = [
        rf"^\W*({alternatives})\W*$",  # the whole reply is the label
        rf"(?:option|choice|choose|chose|pick|picked|select|answer(?: is)?|go with|prefer)\s*[:\-]?\s*\(?\*?\*?({alternatives})(?![\w])",
        rf"\(({alternatives})\)",  # (B)
        rf"^\W*({alternatives})(?:[.):\]]|\s*[-\u2013\u2014])",  # "B." / "B)" / "B -" at the start
        rf"(?<![\w])({alternatives})(?:[.):,;!]?\s*$)",  # the label ends the reply
    ]
    for pattern in patterns:
        match = re.search(pattern, text.strip(), flags | re.MULTILINE)
        if match:
            hit = match.group(1)
            return next(label for label in labels if label.casefold() == hit.casefold())
    return None


_RUNS_TO_CUT = re.compile(r"[\d,.]*")  # what may follow a number whose digits the cut interrupted
_NUMBER = re.compile(r"(?<![\w.])[-\u2212]?\$?\s?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?\s?(%|percent)?")


def _value(match: re.Match) -> float:
    value = float(match.group(1).replace(",", "") + (match.group(2) or ""))
    return -value if match.group(0).lstrip("$ ").startswith(("-", "\u2212")) else value


def parse_number(text: str, low: float | None = None, high: float | None = None, *, cut: bool = False
                 ) -> float | None:
    """The first number in ``text`` (``$1,000`` -> 1000, ``40%`` -> 40); None if none, or outside [low, high].

    ``cut``: the reply stopped at ``max_tokens`` (``finish_reason == "length"``). Then a number that runs to the
    end of the text (its last digit is followed by nothing, or by commas and points alone) may be the head of a
    longer one, and the reply counts as unparseable rather than as a number it did not write.
    """
    for match in _NUMBER.finditer(text):
        if cut and match.group(0)[-1].isdigit() and _RUNS_TO_CUT.fullmatch(text[match.end():]):
            return None
        value = _value(match)
        if low is not None and high is not None and not low <= value <= high:
            return None
        return value
    return None


def numbers_in(text: str) -> list[float]:
    """Every number written in ``text``, read as ``parse_number`` reads one (a prompt's endowment and bounds)."""
    return [_value(match) for match in _NUMBER.finditer(text)]


def copied_share(reply: str, source: str, n: int = 3) -> float:
    """The share of the reply's word n-grams that also occur in ``source`` (what the agent read): 1.0 is a copy.

    A small model in a group chat often repeats what it read; an emotion that "spreads" by copying is
    not the same finding as one that spreads into new words, so reports show this beside contagion.
    A reply shorter than ``n`` words counts as copied when all its words occur in the source.
    """
    words = re.findall(r"\w+", reply.casefold())
    seen = re.findall(r"\w+", source.casefold())
    if not words:
        return float("nan")
    if len(words) < n:
        return float(all(w in set(seen) for w in words))
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    known = {tuple(seen[i:i + n]) for i in range(len(seen) - n + 1)}
    return sum(g in known for g in grams) / len(grams)
