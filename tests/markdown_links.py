"""The images a Markdown file links (``![alt](path)`` and ``<img src=...>``), and those that are missing.

Used by the image-link test over the repository's Markdown and the reports emolab writes
(tests/test_markdown_images.py) and by the tests that write reports with real runs."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["linked_images", "missing_images"]

_MARKDOWN = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
_HTML = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def linked_images(markdown: Path) -> list[str]:
    """Every local image target of the file, in order (code blocks and web or data URLs left out)."""
    text = _FENCE.sub("", markdown.read_text(encoding="utf-8"))
    targets = [m.group(1) for m in _MARKDOWN.finditer(text)] + [m.group(1) for m in _HTML.finditer(text)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.IGNORECASE) and not t.startswith("#")]


def missing_images(markdown: Path) -> list[str]:
    """The linked images that are not files, relative to the Markdown file's folder."""
    return [t for t in linked_images(markdown) if not (markdown.parent / t.split("#")[0]).is_file()]
