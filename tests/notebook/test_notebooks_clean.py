"""Notebooks are committed without outputs (scripts/strip_notebooks.py strips them; this is the CI gate)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import nbformat
import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("strip_notebooks", ROOT / "scripts" / "strip_notebooks.py")
strip_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(strip_notebooks)

NOTEBOOK_PATHS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOK_PATHS} >= {"01_extract.ipynb", "02_inspect.ipynb", "03_steer.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.name)
def test_notebook_has_no_outputs(path):
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    assert strip_notebooks.dirt(book) == [], f"{path.name} has outputs: run python scripts/strip_notebooks.py"
    assert book.metadata.kernelspec.name == "python3"


def executed_copy() -> nbformat.NotebookNode:
    book = nbformat.read(ROOT / "notebooks" / "02_inspect.ipynb", as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    code[0].execution_count = 1
    code[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    code[1].metadata["papermill"] = {"duration": 1.0}
    book.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return book


def test_check_flags_outputs_and_strip_removes_them(tmp_path):
    path = tmp_path / "dirty.ipynb"
    nbformat.write(executed_copy(), path)
    check = [sys.executable, str(ROOT / "scripts" / "strip_notebooks.py"), "--check", str(path)]
    out = subprocess.run(check, capture_output=True, text=True)
    assert out.returncode == 1
    assert "metadata.widgets" in out.stderr and "outputs" in out.stderr and "execution_count" in out.stderr
    assert "metadata.papermill" in out.stderr
    subprocess.run([sys.executable, str(ROOT / "scripts" / "strip_notebooks.py"), str(path)], check=True,
                   capture_output=True)
    assert subprocess.run(check, capture_output=True, text=True).returncode == 0
    stripped = nbformat.read(path, as_version=4)
    original = nbformat.read(ROOT / "notebooks" / "02_inspect.ipynb", as_version=4)
    assert [c.source for c in stripped.cells] == [c.source for c in original.cells]
