"""Tables are DataFrames; ``markdown_table`` is the one way emolab writes one as Markdown.

Every report builds its numbers into a ``pandas.DataFrame`` first (the bundle's AUC and norms, the eval and
tune reports, the bench summary, a simulation's effects) and writes Markdown, JSON and printed tables from
that frame, so each number has one source. Importing this module loads pandas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

__all__ = ["format_cell", "json_records", "markdown_table"]


def format_cell(value: Any, floatfmt: str = ".3f") -> str:
    """A cell as text: floats by ``floatfmt`` (NaN: empty), None empty, anything else ``str``."""
    if isinstance(value, float):
        return "" if value != value else format(value, floatfmt)
    return "" if value is None else str(value)


def markdown_table(frame: pd.DataFrame, columns: Sequence[str] | None = None,
                   floatfmt: str | Mapping[str, str] = ".3f", align: str | Mapping[str, str] | None = None) -> str:
    """``frame`` (its ``columns``, those it has, in that order; default all) as a Markdown table.

    ``floatfmt``: the format of float cells, one for all or per column (columns not named: ``.3f``);
    NaN and None cells are empty, other values ``str``. ``align``: ``l`` or ``r`` per column, as a
    string of one letter per column or a mapping (default: left, ``---``; right is ``---:``). The
    index is not written: reset it first to show it.
    """
    columns = [c for c in (columns or list(frame.columns)) if c in frame.columns]
    formats = {c: floatfmt if isinstance(floatfmt, str) else floatfmt.get(c, ".3f") for c in columns}
    if align is None:
        sides = ["l"] * len(columns)
    elif isinstance(align, str):
        sides = list(align)
        if len(sides) != len(columns):
            raise ValueError(f"align {align!r} names {len(sides)} columns; the table has {len(columns)}")
    else:
        sides = [align.get(c, "l") for c in columns]
    lines = ["| " + " | ".join(map(str, columns)) + " |",
             "|" + "|".join("---:" if side == "r" else "---" for side in sides) + "|"]
    for row in frame[columns].itertuples(index=False):
        lines.append("| " + " | ".join(format_cell(v, f) for v, f in zip(row, formats.values(), strict=True)) + " |")
    return "\n".join(lines) + "\n"


def json_records(frame: pd.DataFrame, optional: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The frame's rows as JSON-able dicts of Python values (``to_dict("records")``).

    In the ``optional`` columns a NaN stands for "no value" and is written as None (``null``); elsewhere
    values are kept as they are, so a measured NaN stays NaN.
    """
    records = frame.to_dict("records")
    for record in records:
        for key in optional:
            value = record.get(key)
            if isinstance(value, float) and math.isnan(value):
                record[key] = None
    return records
