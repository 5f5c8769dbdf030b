#!/usr/bin/env python3
"""Strip outputs, execution counts and widget state from notebooks (what git should hold).

    python scripts/strip_notebooks.py            # strip notebooks/*.ipynb in place
    python scripts/strip_notebooks.py --check    # exit 1 and name every notebook that has outputs (CI)

tests/test_notebooks_clean.py runs the check, so a notebook committed with outputs fails `make test`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
VOLATILE_METADATA = ("widgets", "papermill", "execution")


def dirt(book: nbformat.NotebookNode) -> list[str]:
    """What is left in a notebook that should not be committed (empty when clean)."""
    found = [f"metadata.{key}" for key in VOLATILE_METADATA if key in book.metadata]
    for i, cell in enumerate(book.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            found.append(f"cell {i}: outputs")
        if cell.get("execution_count") is not None:
            found.append(f"cell {i}: execution_count")
        found += [f"cell {i}: metadata.{key}" for key in VOLATILE_METADATA if key in cell.metadata]
    return found


def strip(book: nbformat.NotebookNode) -> nbformat.NotebookNode:
    for key in VOLATILE_METADATA:
        book.metadata.pop(key, None)
    for cell in book.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            for key in VOLATILE_METADATA:
                cell.metadata.pop(key, None)
    return book


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if any notebook has outputs")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    dirty = 0
    for path in paths:
        book = nbformat.read(path, as_version=4)
        found = dirt(book)
        if not found:
            continue
        dirty += 1
        if args.check:
            print(f"{path}: {', '.join(found)}", file=sys.stderr)
        else:
            nbformat.write(strip(book), path)
            print(f"stripped {path}")
    if args.check and dirty:
        print(f"{dirty} notebook(s) have outputs; run `python scripts/strip_notebooks.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
