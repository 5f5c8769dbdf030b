"""emolab: contrastive emotion vectors, their inspection, and per-request steering."""

from emolab.bundle import BundleError, EmotionBundle
from emolab.emotions import DEFAULT_EMOTIONS, EKMAN_GROUPS

__version__ = "0.1.0"

__all__ = ["BundleError", "DEFAULT_EMOTIONS", "EKMAN_GROUPS", "EmotionBundle", "__version__"]
