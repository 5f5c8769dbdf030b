"""The images a Markdown file links (``![alt](path)`` and ``<img src=...>``), and those that are missing.

Used by the image-link test over the repository's Markdown and the reports emolab writes
(tests/test_markdown_images.py) and by the tests that write reports with real runs."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["broken_links", "heading_anchors", "linked_images", "missing_images"]

_MARKDOWN = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
_HTML = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def linked_images(markdown: Path) -> list[str]:
    """Every local image target of the file, in order (code blocks and web or data URLs left out)."""
    text = _FENCE.sub("", markdown.read_text(encoding="utf-8"))
    targets = [m.group(1) for m in _MARKDOWN.finditer(text)] + [m.group(1) for m in _HTML.finditer(text)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.IGNORECASE) and not t.startswith("#")]


def missing_images(markdown: Path) -> list[str]:
    """The linked images that are not files, relative to the Markdown file's folder."""
    return [t for t in linked_images(markdown) if not (markdown.parent / t.split("#")[0]).is_file()]


def heading_anchors(markdown: Path) -> set[str]:
    """The anchors GitHub gives the file's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = _FENCE.sub("", markdown.read_text(encoding="utf-8"))
    headings = (line.lstrip("#").strip() for line in text.splitlines() if re.match(r"#{1,6} ", line))
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def broken_links(markdown: Path) -> list[str]:
    """The file's local links (not images) whose file is missing, or whose ``#anchor`` names no heading there."""
    text = _FENCE.sub("", markdown.read_text(encoding="utf-8"))
    broken = []
    for target in (m.group(1) for m in _LINK.finditer(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # web and mail addresses
        path, _, anchor = target.partition("#")
        file = markdown.parent / path if path else markdown
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in heading_anchors(file)):
            broken.append(target)
    return broken
