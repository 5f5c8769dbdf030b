"""Core types every stage shares: the bundle, the steering value, emotions, layers, models.

Importing ``emolab.core`` stays light (numpy only); ``emolab.core.models`` and
``emolab.core.offline`` load torch and transformers when imported.
"""

from emolab.core.bundle import ALPHA_SCALES, BundleError, EmotionBundle
from emolab.core.emotions import DEFAULT_EMOTIONS, EKMAN_GROUPS, EmotionError, parse_emotions
from emolab.core.errors import EmolabError
from emolab.core.layers import LayerError, parse_layers
from emolab.core.steering import Steering, SteeringError, SteeringLimits

__all__ = [
    "ALPHA_SCALES", "BundleError", "DEFAULT_EMOTIONS", "EKMAN_GROUPS", "EmolabError", "EmotionBundle", "EmotionError",
    "LayerError", "Steering", "SteeringError", "SteeringLimits", "parse_emotions", "parse_layers",
]
