"""The suite must leave ``git status`` clean: no test or target may write into a tracked file.

(A test once overwrote the committed bundle's recommendations.) ``conftest.py`` records the tracked
files' state when the session starts and fails the session if it differs at the end; the comparison
is against the start, so a developer's own uncommitted edits do not count.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

_KEY = "_emolab_tracked_before"


def tracked_changes(root: Path) -> str | None:
    """``git status --porcelain`` of tracked files; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def remember_tracked_state(session: pytest.Session, root: Path) -> None:
    setattr(session.config, _KEY, tracked_changes(root))


def fail_if_tracked_files_changed(session: pytest.Session, root: Path) -> None:
    before = getattr(session.config, _KEY, None)
    after = tracked_changes(root)
    if before is None or after is None or before == after:
        return
    changed = sorted(set(after.splitlines()) ^ set(before.splitlines()))
    session.config.get_terminal_writer().line(
        "\nTESTS WROTE INTO TRACKED FILES (git status changed during the run):\n  " + "\n  ".join(changed), red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
