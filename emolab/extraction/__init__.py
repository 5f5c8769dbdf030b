"""Extraction: GoEmotions texts -> residual-stream activations -> emotion vectors -> a bundle.

``extract(ExtractConfig(...))`` runs the whole pipeline (``pipeline``); the parts are ``data``
(GoEmotions loading, Ekman grouping, balancing, splits), ``capture`` (hooks on decoder blocks),
``methods`` (vectors from activations), ``learned`` (directions fitted by gradient descent on what
the push does to replies; ``LearnSettings``) and ``probe`` (layer ranking by ROC-AUC).
"""

from emolab.extraction.errors import ExtractError
from emolab.extraction.learn_settings import LearnSettings
from emolab.extraction.pipeline import ExtractConfig, extract

__all__ = ["ExtractConfig", "ExtractError", "LearnSettings", "extract"]
