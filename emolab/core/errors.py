"""emolab's domain errors. Each carries a message meant for the user; none names a CLI flag.

The CLI (``emolab.cli``) maps them to one error line (naming the flag or file where it knows which)
and exit status 2. They also subclass ``ValueError`` or ``RuntimeError`` so that callers written
against the standard exceptions keep working.
"""

from __future__ import annotations

__all__ = ["EmolabError", "ModelError"]


class EmolabError(Exception):
    """Base of every emolab error: a problem with the user's input or setup, not a bug.

    ``setting`` names the configuration field at fault when there is one (``"layers"``,
    ``"max_per_class"``); the CLI turns it into the flag's name, the library never writes flags.
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class ModelError(EmolabError, RuntimeError):
    """A model that cannot be resolved, built or loaded, or a device/dtype that does not exist."""
