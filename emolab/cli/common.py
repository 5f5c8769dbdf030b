"""What every sub-command shares: flag parsers, the usage error, and the map from settings to flags.

Library functions raise domain errors (``EmolabError``) that may name the setting at fault; only
this layer knows the flags, so only this layer words messages in terms of them.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping

__all__ = ["REFERENCE_PROG", "UsageError", "flag_for", "fraction", "number_list", "positive_int", "word_list"]

REFERENCE_PROG = "emotion-steering"  # the reference tool's program name: a second entry point of this CLI


class UsageError(Exception):
    """A bad flag value found after parsing; reported like argparse's own errors (exit status 2)."""


def flag_for(setting: str, overrides: Mapping[str, str] | None = None) -> str:
    """The flag of a configuration field: ``max_per_class`` -> ``--max-per-class``."""
    if overrides and setting in overrides:
        return overrides[setting]
    return "--" + setting.replace("_", "-")


def positive_int(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be at least 1, got {value}")
        return value

    return parse


def fraction(flag: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a number, got {text!r}") from None
        if not 0.0 < value < 1.0:
            raise argparse.ArgumentTypeError(f"{flag} must be between 0 and 1, got {value}")
        return value

    return parse


def number_list(flag: str, kind: type = float, minimum: float | None = None) -> Callable[[str], list]:
    """``1,20,64``-style flag values: at least one finite number of ``kind``, each >= ``minimum``."""
    noun = "whole numbers" if kind is int else "numbers"

    def parse(text: str) -> list:
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes comma-separated {noun}, got {text!r}") from None
        if not values or not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"{flag} needs finite {noun}, got {text!r}")
        if minimum is not None and min(values) < minimum:
            raise argparse.ArgumentTypeError(f"{flag} needs numbers >= {minimum:g}, got {text!r}")
        return values

    return parse


def word_list(text: str) -> list[str]:
    """``a,b,c`` -> ``["a", "b", "c"]`` (blanks dropped)."""
    return [x.strip() for x in text.split(",") if x.strip()]
