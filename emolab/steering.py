"""The steering request contract, shared by every backend.

A request carries ``"vllm_xargs": {"steering": [id, alpha, id, alpha, ...]}`` (flat, so it passes
vLLM's own ``vllm_xargs`` type rules) or a top-level ``"steering"`` list. Ids are emotion ids of the
bundle or emotion names. ``[0, 1.0, 2, 0.5]`` means ``1.0*v0 + 0.5*v2`` at every chosen layer;
repeated ids add; negative alphas push away; an empty or absent list means the plain model.

Everything here is pure Python/numpy so the API process validates before anything is scheduled.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MAX_ALPHA = 10.0
DEFAULT_MAX_PAIRS = 16


class SteeringError(ValueError):
    """A malformed steering request. ``param`` names the offending request field."""

    def __init__(self, message: str, param: str = "vllm_xargs.steering") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SteeringLimits:
    max_alpha: float = DEFAULT_MAX_ALPHA
    max_pairs: int = DEFAULT_MAX_PAIRS


def steering_field(body: dict[str, Any]) -> tuple[Any, str] | None:
    """The raw steering value of a request body and the name of the field it came from."""
    xargs = body.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        raise SteeringError("vllm_xargs must be a JSON object", param="vllm_xargs")
    in_xargs = xargs is not None and "steering" in xargs
    if in_xargs and "steering" in body:
        raise SteeringError("give steering once: either vllm_xargs.steering or top-level steering", param="steering")
    if in_xargs:
        return xargs["steering"], "vllm_xargs.steering"
    if "steering" in body:
        return body["steering"], "steering"
    return None


def parse_steering(
    raw: Any, emotions: list[str], limits: SteeringLimits = SteeringLimits(), param: str = "vllm_xargs.steering"
) -> list[tuple[int, float]]:
    """Validate a flat ``[id_or_name, alpha, ...]`` list into ``[(emotion_id, alpha), ...]``."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SteeringError(f"{param} must be a flat list [emotion, alpha, ...], got {type(raw).__name__}", param)
    if len(raw) % 2:
        raise SteeringError(f"{param} must hold emotion/alpha pairs; got an odd number of items ({len(raw)})", param)
    n_pairs = len(raw) // 2
    if n_pairs > limits.max_pairs:
        raise SteeringError(f"{param} has {n_pairs} pairs; at most {limits.max_pairs} are allowed", param)
    names = {name: i for i, name in enumerate(emotions)}
    pairs = []
    for k in range(n_pairs):
        ident, alpha = raw[2 * k], raw[2 * k + 1]
        where = f"{param}[{2 * k}]"
        if isinstance(ident, bool):
            raise SteeringError(f"{where}: emotion must be an id or a name, got a boolean", param)
        if isinstance(ident, str):
            key = ident.strip().lower()
            if key in names:
                emotion_id = names[key]
            elif key.lstrip("-").isdigit():
                emotion_id = int(key)
            else:
                raise SteeringError(f"{where}: unknown emotion {ident!r}; known: {emotions}", param)
        elif isinstance(ident, int):
            emotion_id = ident
        elif isinstance(ident, float) and ident.is_integer():
            emotion_id = int(ident)  # vLLM may turn 2 into 2.0 on the way; accept integral floats
        else:
            raise SteeringError(f"{where}: emotion must be an integer id or a name, got {ident!r}", param)
        if not 0 <= emotion_id < len(emotions):
            raise SteeringError(f"{where}: unknown emotion id {emotion_id}; ids are 0..{len(emotions) - 1}", param)
        where = f"{param}[{2 * k + 1}]"
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, str)):
            raise SteeringError(f"{where}: alpha must be a number, got {alpha!r}", param)
        try:
            value = float(alpha)
        except ValueError:
            raise SteeringError(f"{where}: alpha must be a number, got {alpha!r}", param) from None
        if not math.isfinite(value):
            raise SteeringError(f"{where}: alpha must be finite, got {alpha!r}", param)
        if abs(value) > limits.max_alpha:
            raise SteeringError(f"{where}: |alpha| = {abs(value)} exceeds the server's bound {limits.max_alpha}", param)
        pairs.append((emotion_id, value))
    return pairs


def coefficients(pairs: list[tuple[int, float]], n_emotions: int) -> np.ndarray:
    """One coefficient per emotion (repeated ids add); all zeros means unsteered."""
    coeffs = np.zeros(n_emotions, dtype=np.float32)
    for emotion_id, alpha in pairs:
        coeffs[emotion_id] += alpha
    return coeffs


def canonical(pairs: list[tuple[int, float]]) -> list[float]:
    """The flat numeric form sent to the engine: ``[id, alpha, ...]`` with ids as numbers."""
    return [x for emotion_id, alpha in pairs for x in (float(emotion_id), float(alpha))]


def cache_salt(coeffs: np.ndarray) -> str | None:
    """A prefix-cache salt that differs between different steerings and is None when unsteered.

    Steered KV differs from plain KV for the same tokens, so requests with different coefficients
    must not share cached blocks; unsteered requests keep sharing as before.
    """
    if not np.any(coeffs):
        return None
    digest = hashlib.sha256(np.ascontiguousarray(coeffs, dtype=np.float32).tobytes()).hexdigest()[:16]
    return f"emolab-{digest}"
