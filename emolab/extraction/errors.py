"""The extraction's domain error."""

from __future__ import annotations

from emolab.core.errors import EmolabError

__all__ = ["ExtractError"]


class ExtractError(EmolabError, ValueError):
    """Extraction settings or data that cannot produce a bundle."""
