"""Never write into files a git checkout tracks: the committed bundles are products, not scratch space.

``emolab extract``, ``emolab tune`` and ``write_recommendations`` call ``refuse_tracked`` on the
folder they are about to write; a committed bundle (``vectors/smollm2``) changes only by a person
copying a new folder over it and committing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from emolab.core.errors import EmolabError

__all__ = ["TrackedPathError", "refuse_tracked", "tracked_files"]


class TrackedPathError(EmolabError, ValueError):
    """An output that would overwrite files a git checkout tracks."""


def tracked_files(path: str | Path) -> list[str]:
    """The files at or under ``path`` that the git checkout holding it tracks (empty outside git)."""
    target = Path(path).resolve()
    anchor = target
    while not anchor.is_dir():  # the nearest folder that exists, to run git in
        if anchor.parent == anchor:
            return []
        anchor = anchor.parent
    try:
        result = subprocess.run(["git", "-C", str(anchor), "ls-files", "-z", "--full-name", "--", str(target)],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):  # no git at all: nothing can be tracked
        return []
    if result.returncode != 0:  # not inside a work tree
        return []
    return [name for name in result.stdout.split("\0") if name]


def refuse_tracked(path: str | Path, *, setting: str | None = "output") -> None:
    """Raise ``TrackedPathError`` when ``path`` is, or holds, a file the git checkout tracks."""
    files = tracked_files(path)
    if files:
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        raise TrackedPathError(
            f"{path} holds files this git checkout tracks ({shown}); write to a new folder and copy it over "
            "deliberately if it is meant to replace them", setting=setting)
