"""``emolab.core.tables``: the one Markdown writer of every report, and JSON records from a frame."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from emolab.core.tables import json_records, markdown_table


def test_markdown_table_by_hand():
    frame = pd.DataFrame({"name": ["a", "b"], "n": [3, 4], "x": [0.12345, float("nan")], "note": [None, "ok"]})
    assert markdown_table(frame) == ("| name | n | x | note |\n|---|---|---|---|\n"
                                     "| a | 3 | 0.123 |  |\n| b | 4 |  | ok |\n")
    # columns it lacks are skipped; order as asked; float formats per column; right alignment
    assert markdown_table(frame, ["x", "missing", "name"], floatfmt={"x": "+.1f"}, align="rl") == (
        "| x | name |\n|---:|---|\n| +0.1 | a |\n|  | b |\n")
    assert markdown_table(frame, ["name", "x"], floatfmt=".2f", align={"x": "r"}).splitlines()[1:3] == [
        "|---|---:|", "| a | 0.12 |"]
    assert markdown_table(frame.iloc[:0]) == "| name | n | x | note |\n|---|---|---|---|\n"
    with pytest.raises(ValueError, match="align"):
        markdown_table(frame, align="lr")


def test_json_records_keep_python_values():
    frame = pd.DataFrame({"label": ["a", "b"], "n": [1, 2], "ratio": [1.5, float("nan")], "p99": [float("nan"), 2.0]})
    records = json_records(frame, optional=["ratio"])
    assert records[1]["ratio"] is None and math.isnan(records[0]["p99"])  # only optional NaNs become null
    assert type(records[0]["n"]) is int and type(records[0]["ratio"]) is float
    assert json.loads(json.dumps(records))[1] == {"label": "b", "n": 2, "ratio": None, "p99": 2.0}
