"""The six Ekman emotions and how GoEmotions' 27 fine labels map onto them."""

from __future__ import annotations

from emolab.core.errors import EmolabError

__all__ = ["DEFAULT_EMOTIONS", "EKMAN_GROUPS", "EMOTION_ADJECTIVES", "EmotionError", "FINE_TO_EKMAN", "GOEMOTIONS_LABELS", "parse_emotions"]


class EmotionError(EmolabError, ValueError):
    """An emotion list that cannot be used."""

# Order matters: it is the default emotion order of a bundle, hence the default emotion ids
# of the server. It matches the reference tool so that ids stay compatible.
DEFAULT_EMOTIONS: tuple[str, ...] = ("anger", "joy", "sadness", "disgust", "fear", "surprise")

EKMAN_GROUPS: dict[str, tuple[str, ...]] = {
    "anger": ("anger", "annoyance", "disapproval"),
    "disgust": ("disgust",),
    "fear": ("fear", "nervousness"),
    "joy": (
        "admiration", "amusement", "approval", "caring", "desire", "excitement",
        "gratitude", "joy", "love", "optimism", "pride", "relief",
    ),
    "sadness": ("disappointment", "embarrassment", "grief", "remorse", "sadness"),
    "surprise": ("confusion", "curiosity", "realization", "surprise"),
}

# GoEmotions' label ids index this list (the order of emotions.txt; 27 = neutral).
GOEMOTIONS_LABELS: tuple[str, ...] = (
    "admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion",
    "curiosity", "desire", "disappointment", "disapproval", "disgust", "embarrassment",
    "excitement", "fear", "gratitude", "grief", "joy", "love", "nervousness", "optimism",
    "pride", "realization", "relief", "remorse", "sadness", "surprise", "neutral",
)

# How a prompt asks for each emotion ("you feel {adjective}"): the prompted baseline steering must beat.
EMOTION_ADJECTIVES: dict[str, str] = {
    "anger": "angry", "joy": "joyful", "sadness": "sad", "disgust": "disgusted", "fear": "afraid",
    "surprise": "surprised",
}

FINE_TO_EKMAN: dict[str, str] = {fine: ekman for ekman, fines in EKMAN_GROUPS.items() for fine in fines}


def parse_emotions(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Parse ``"anger,joy"`` (or a list) into a validated, de-duplicated list of Ekman names."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [item.strip().lower() for item in items if item.strip()]
    unknown = [name for name in names if name not in EKMAN_GROUPS]
    if unknown:
        raise EmotionError(f"unknown emotion(s) {unknown}; choose from {sorted(EKMAN_GROUPS)}")
    if len(set(names)) != len(names):
        raise EmotionError(f"emotion listed twice in {names}")
    if len(names) < 2:
        raise EmotionError("need at least two emotions: each vector is contrasted with the others")
    return names
