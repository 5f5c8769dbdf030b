"""The steering contract shared by every backend: one ``Steering`` value per request.

A request carries ``"vllm_xargs": {"steering": [id, alpha, id, alpha, ...]}`` (flat, so it passes
vLLM's own ``vllm_xargs`` type rules) or a top-level ``"steering"`` list. Ids are emotion ids of the
bundle or emotion names. ``[0, 1.0, 2, 0.5]`` means ``1.0*v0 + 0.5*v2`` at every chosen layer;
repeated ids add; negative alphas push away; an empty or absent list means the plain model.

Everything here is pure Python/numpy so the API process validates before anything is scheduled.
``Steering`` is the one way to build, parse and serialise a steering; the prefix-cache salt of a
steering is keyed with a per-server secret (``steering_salt``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emolab.core.errors import EmolabError

__all__ = [
    "DEFAULT_MAX_ALPHA", "DEFAULT_MAX_PAIRS", "SALT_SECRET_ENV", "Steering", "SteeringError", "SteeringLimits",
    "canonical", "coefficients", "combine_cache_salt", "new_salt_secret", "parse_steering", "salt_secret",
    "steering_field", "steering_salt",
]

DEFAULT_MAX_ALPHA = 10.0
DEFAULT_MAX_PAIRS = 16
SALT_SECRET_ENV = "EMOLAB_SALT_SECRET"  # hex; shared by every front-end process of one server
_INTEGER_ID = re.compile(r"[+-]?[0-9]{1,9}")  # ASCII digits only: "²" and "--1" are not ids


class SteeringError(EmolabError, ValueError):
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
            elif _INTEGER_ID.fullmatch(key):
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
            raise SteeringError(f"{where}: alpha must be a number, got {alpha!r:.80}", param) from None
        except OverflowError:  # an integer too large for a float
            raise SteeringError(f"{where}: alpha must be finite; got an integer of {alpha.bit_length()} bits",
                                param) from None
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


def canonical(pairs: Sequence[tuple[int, float]]) -> list[float]:
    """The flat numeric form sent to the engine: ``[id, alpha, ...]`` with ids as numbers."""
    return [x for emotion_id, alpha in pairs for x in (float(emotion_id), float(alpha))]


@dataclass(frozen=True)
class Steering:
    """One request's steering: ``(emotion id, alpha)`` pairs over a bundle's emotion list.

    Empty means the plain model. Build one from a request (``parse``, ``from_body``) or from a
    mapping (``from_mapping({"fear": 1.0, "joy": -0.5}, emotions)``); send one as ``as_request()``
    (the flat list the servers take) or ``canonical()`` (ids as numbers, what the engine sees).
    """

    pairs: tuple[tuple[int, float], ...] = ()

    @classmethod
    def parse(cls, raw: Any, emotions: Sequence[str], limits: SteeringLimits | None = None,
              param: str = "vllm_xargs.steering") -> Steering:
        """Validate a flat ``[id_or_name, alpha, ...]`` list (``None`` = unsteered)."""
        return cls(tuple(parse_steering(raw, list(emotions), limits or SteeringLimits(), param=param)))

    @classmethod
    def from_body(cls, body: Mapping[str, Any], emotions: Sequence[str], limits: SteeringLimits | None = None) -> Steering:
        """The steering of a request body (``vllm_xargs.steering`` or a top-level ``steering``)."""
        found = steering_field(dict(body))
        if found is None:
            return cls()
        raw, param = found
        return cls.parse(raw, emotions, limits, param=param)

    @classmethod
    def from_mapping(cls, alphas: Mapping[str | int, float], emotions: Sequence[str],
                     limits: SteeringLimits | None = None) -> Steering:
        """``{"fear": 1.0, 2: 0.5}`` (names or ids) in the given order; zero alphas are left out."""
        flat = [x for key, alpha in alphas.items() if alpha for x in (key, alpha)]
        return cls.parse(flat, emotions, limits, param="steering")

    def __bool__(self) -> bool:
        return any(alpha for _, alpha in self.pairs)

    def coefficients(self, n_emotions: int) -> np.ndarray:
        return coefficients(list(self.pairs), n_emotions)

    def canonical(self) -> list[float]:
        return canonical(self.pairs)

    def as_request(self, emotions: Sequence[str] | None = None) -> list[str | int | float]:
        """The flat request list: emotion names when ``emotions`` is given (readable), else ids."""
        return [x for emotion_id, alpha in self.pairs
                for x in ((emotions[emotion_id] if emotions else emotion_id), alpha)]

    def salt(self, n_emotions: int, secret: bytes | None = None) -> str | None:
        return steering_salt(self.coefficients(n_emotions), secret)

    def describe(self, emotions: Sequence[str]) -> str:
        return ", ".join(f"{emotions[i]}={a:+g}" for i, a in self.pairs) or "unsteered"


_SECRET: bytes | None = None


def salt_secret() -> bytes:
    """This process's key for steering salts: ``$EMOLAB_SALT_SECRET`` (hex), else a random one.

    ``emolab serve`` draws one secret per server and hands it to every front-end process through the
    environment; without it (plain ``vllm serve`` or an offline ``LLM``) each process draws its own,
    which only means that two such processes do not share steered prefix-cache blocks.
    """
    global _SECRET
    if _SECRET is None:  # read once per process: every request of this process uses the same key
        value = os.environ.get(SALT_SECRET_ENV)
        try:
            _SECRET = bytes.fromhex(value) if value else os.urandom(32)
        except ValueError:
            raise SteeringError(f"${SALT_SECRET_ENV} must be hex, got {len(value or '')} other characters", None) from None
        if value and len(_SECRET) < 16:
            raise SteeringError(f"${SALT_SECRET_ENV} must hold at least 16 bytes (32 hex digits)", None)
    return _SECRET


def new_salt_secret() -> str:
    """A fresh secret for ``$EMOLAB_SALT_SECRET`` (64 hex digits)."""
    return os.urandom(32).hex()


def steering_salt(coeffs: np.ndarray, secret: bytes | None = None) -> str | None:
    """The steering part of a prefix-cache salt: ``s:`` + HMAC-SHA256(secret, coefficients); None unsteered.

    Steered KV differs from plain KV for the same tokens, so requests with different coefficients must
    not share cached blocks. The salt is keyed with a server secret so that no client can compute the
    salt of someone else's steering and fill the cache under it (a public hash of the coefficients
    could be sent as a plain ``cache_salt`` by an unsteered request: cache poisoning).
    """
    if not np.any(coeffs):
        return None
    key = salt_secret() if secret is None else secret
    data = np.ascontiguousarray(coeffs, dtype=np.float32).tobytes()
    return "s:" + hmac.new(key, data, hashlib.sha256).hexdigest()[:32]


def combine_cache_salt(client_salt: str | None, steering: str | None) -> str | None:
    """One prefix-cache salt from a client's own ``cache_salt`` and the steering salt.

    Client salts live in their own namespace (``u<length>:<salt>``) so no client salt can equal a
    steering salt or a combination of the two; the encoding is injective. Both absent: None, so
    unsteered requests without a salt share the cache as before.
    """
    parts = []
    if client_salt is not None:
        parts.append(f"u{len(client_salt)}:{client_salt}")
    if steering is not None:
        parts.append(steering)
    return "|".join(parts) or None
