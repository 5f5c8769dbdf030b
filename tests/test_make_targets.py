"""No make target writes into vectors/: the committed bundles are read (served, evaluated, exported) only."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Flags that only read the folder they name.
READ_ONLY = ("--bundle", "--vectors", "--serve-vectors", "--evaluate", "-p bundle_path", "test")


def _recipes() -> list[str]:
    """Recipe lines (continuations joined) of the Makefile."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.startswith("\t")]


def test_no_make_target_writes_into_vectors():
    default = re.search(r"^BUNDLE\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert default.startswith("vectors/")
    uses = 0
    for line in _recipes():
        for match in re.finditer(r"(\S+(?: \S+)?)\s+(\$\(BUNDLE\)|vectors/\S*)", line):
            before = match.group(1)
            if before.endswith("$(notdir"):  # only the bundle's name, to label a runs/ folder
                continue
            uses += 1
            assert before.endswith(READ_ONLY), f"make writes into {match.group(2)}?  {line}"
        assert not re.search(r"(--output|--report|--markdown|>|cp|mv|rm)\s+\S*(\$\(BUNDLE\)|vectors/)", line), line
    assert uses >= 3  # serve, inspect, effect, bench read it


def test_tune_and_effect_targets_write_under_runs():
    recipes = " ".join(_recipes())
    assert "emolab tune --evaluate $(BUNDLE) --report runs/" in recipes
    assert re.search(r"emolab tune --model \$\(MODEL\)(\s+--bundle runs/\S+)+\s+--output runs/", recipes)
