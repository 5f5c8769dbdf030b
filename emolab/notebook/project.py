"""Helpers for the notebooks in ``notebooks/``.

JupyterLab starts a notebook's kernel in the notebook's own folder, papermill (``make notebooks``,
the tests) in the repository root. The notebooks' paths (``vectors/smollm2``, ``runs/...``) are
relative to the root, so each notebook first calls :func:`use_project_root`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["use_project_root"]


def use_project_root() -> Path:
    """Change into the repository root when the kernel runs inside ``notebooks/``; return the working folder."""
    here = Path.cwd()
    if here.name == "notebooks":
        os.chdir(here.parent)
    return Path.cwd()
