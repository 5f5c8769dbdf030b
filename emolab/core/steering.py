"""The steering contract shared by every backend: one ``Steering`` value per request.

A request carries ``"vllm_xargs": {"steering": [id, alpha, id, alpha, ...]}`` (flat, so it passes
vLLM's own ``vllm_xargs`` type rules) or a top-level ``"steering"`` list. Ids are emotion ids of the
bundle or emotion names. ``[0, 1.0, 2, 0.5]`` means ``1.0*v0 + 0.5*v2`` at every chosen layer;
repeated ids add; negative alphas push away; an empty or absent list means the plain model.

Two optional fields sit beside ``steering`` (in ``vllm_xargs`` or at the top level, like it):

* ``steering_scope``: ``"all"`` (default: every position), ``"prompt"`` (the prompt's positions only) or
  ``"generated"`` (the generated tokens' positions only). A position is steered when the token *at* it is
  in scope; the last prompt position predicts the first generated token, so ``prompt`` shapes that token
  and ``generated`` starts with the second.
* ``steering_modes``: a flat ``[emotion, mode, ...]`` list (or, at the top level, ``{emotion: mode}``),
  mode one of ``add`` (default), ``ablate`` (project the direction out of the residual stream) or
  ``clamp`` (hold the projection on the direction at a level). A clamped emotion's alpha in ``steering``
  is its level on the bundle's alpha scale; an ablated emotion takes no alpha (absent, or 0). The
  operator is ``emolab.core.steering_ops``.

Everything here is pure Python/numpy so the API process validates before anything is scheduled.
``Steering`` is the one way to build, parse and serialise a steering; the prefix-cache salt of a
steering is keyed with a per-server secret (``steering_salt``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emolab.core.controls import (
    MODES,
    MODES_FIELD,
    SCOPE_FIELD,
    SCOPES,
    RowPlan,
    SteeringError,
    control_fields,
    lookup_emotion,
    parse_modes,
    parse_scope,
    row_plan,
)

__all__ = [
    "DEFAULT_MAX_ALPHA", "DEFAULT_MAX_PAIRS", "MODES", "MODES_FIELD", "SALT_SECRET_ENV", "SCOPES", "SCOPE_FIELD",
    "RowPlan", "Steering", "SteeringError", "SteeringLimits", "canonical", "coefficients", "combine_cache_salt",
    "control_fields", "new_salt_secret", "parse_modes", "parse_scope", "parse_steering", "row_plan", "salt_secret",
    "steering_field", "steering_salt",
]

DEFAULT_MAX_ALPHA = 10.0
DEFAULT_MAX_PAIRS = 16
SALT_SECRET_ENV = "EMOLAB_SALT_SECRET"  # hex; shared by every front-end process of one server


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
        emotion_id = lookup_emotion(ident, names, emotions, f"{param}[{2 * k}]", param)
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
    """One request's steering: ``(emotion id, alpha)`` pairs over a bundle's emotion list, a mode for any
    emotion that is not simply added (``ablate``, ``clamp``), and a scope (``all``, ``prompt``, ``generated``).

    Empty means the plain model. Build one from a request (``parse``, ``from_body``) or from a mapping
    (``from_mapping({"fear": 1.0, "joy": -0.5}, emotions)``); send one as ``as_request()`` (the flat list the
    servers take) with ``controls()`` beside it, or ``engine_args()`` (what the engine reads in ``vllm_xargs``).
    """

    pairs: tuple[tuple[int, float], ...] = ()
    modes: tuple[tuple[int, str], ...] = ()  # (emotion id, "ablate" | "clamp"), sorted; add is the default
    scope: str = "all"

    @classmethod
    def parse(cls, raw: Any, emotions: Sequence[str], limits: SteeringLimits | None = None,
              param: str = "vllm_xargs.steering") -> Steering:
        """Validate a flat ``[id_or_name, alpha, ...]`` list (``None`` = unsteered)."""
        return cls(tuple(parse_steering(raw, list(emotions), limits or SteeringLimits(), param=param)))

    @classmethod
    def from_body(cls, body: Mapping[str, Any], emotions: Sequence[str], limits: SteeringLimits | None = None) -> Steering:
        """The steering of a request body: ``steering``, ``steering_modes`` and ``steering_scope``, each in
        ``vllm_xargs`` or at the top level; the plan is checked (a clamp needs its level, an ablate no alpha)."""
        found = steering_field(dict(body))
        pairs = cls.parse(found[0], emotions, limits, param=found[1]) if found else cls()
        controls = control_fields(body)
        modes, scope = (), "all"
        if MODES_FIELD in controls:
            raw, param = controls[MODES_FIELD]
            modes = parse_modes(raw, emotions, param=param)
        if SCOPE_FIELD in controls:
            raw, param = controls[SCOPE_FIELD]
            scope = parse_scope(raw, param=param)
        steering = cls(pairs.pairs, modes, scope)
        if modes:
            row_plan(steering.pairs, modes, len(emotions), param=controls[MODES_FIELD][1], names=list(emotions))
        return steering

    @classmethod
    def from_mapping(cls, alphas: Mapping[str | int, float], emotions: Sequence[str],
                     limits: SteeringLimits | None = None) -> Steering:
        """``{"fear": 1.0, 2: 0.5}`` (names or ids) in the given order; zero alphas are left out."""
        flat = [x for key, alpha in alphas.items() if alpha for x in (key, alpha)]
        return cls.parse(flat, emotions, limits, param="steering")

    def __bool__(self) -> bool:
        return bool(self.modes) or any(alpha for _, alpha in self.pairs)

    def coefficients(self, n_emotions: int) -> np.ndarray:
        """The alpha of every emotion (repeated ids add); for a clamped emotion that is its level."""
        return coefficients(list(self.pairs), n_emotions)

    def plan(self, n_emotions: int) -> RowPlan:
        return row_plan(self.pairs, self.modes, n_emotions)

    @property
    def adds_only(self) -> bool:
        """Only additions at every position: what every backend did before modes and scopes."""
        return not self.modes and self.scope == "all"

    def canonical(self) -> list[float]:
        return canonical(self.pairs)

    def engine_args(self) -> dict[str, Any]:
        """The ``vllm_xargs`` entries the engine reads: ids as numbers, defaults left out."""
        args: dict[str, Any] = {"steering": self.canonical()} if self else {}
        if self.modes:
            args[MODES_FIELD] = [x for emotion_id, mode in self.modes for x in (float(emotion_id), mode)]
        if self.scope != "all" and self:
            args[SCOPE_FIELD] = self.scope
        return args

    def as_request(self, emotions: Sequence[str] | None = None) -> list[str | int | float]:
        """The flat request list: emotion names when ``emotions`` is given (readable), else ids."""
        return [x for emotion_id, alpha in self.pairs
                for x in ((emotions[emotion_id] if emotions else emotion_id), alpha)]

    def controls(self, emotions: Sequence[str] | None = None) -> dict[str, Any]:
        """The control fields to send beside ``as_request()`` (none for plain additions everywhere)."""
        fields: dict[str, Any] = {}
        if self.modes:
            fields[MODES_FIELD] = [x for emotion_id, mode in self.modes
                                   for x in ((emotions[emotion_id] if emotions else emotion_id), mode)]
        if self.scope != "all":
            fields[SCOPE_FIELD] = self.scope
        return fields

    def salt(self, n_emotions: int, secret: bytes | None = None) -> str | None:
        """The keyed prefix-cache salt: the coefficients, and the modes and scope when they are not the defaults."""
        if not self:
            return None
        extra = b"" if self.adds_only else repr((self.modes, self.scope)).encode()
        return steering_salt(self.coefficients(n_emotions), secret, extra=extra)

    def describe(self, emotions: Sequence[str]) -> str:
        modes = dict(self.modes)
        parts = []
        for i, a in self.pairs:
            mode = modes.get(i, "add")
            parts.append(f"{emotions[i]}={a:+g}" if mode == "add" else f"{emotions[i]} {mode} {a:+g}")
        parts += [f"{emotions[i]} ablate" for i, mode in self.modes if mode == "ablate"]
        text = ", ".join(parts) or "unsteered"
        return text if self.scope == "all" or not self else f"{text} ({self.scope} only)"


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


def steering_salt(coeffs: np.ndarray, secret: bytes | None = None, extra: bytes = b"") -> str | None:
    """The steering part of a prefix-cache salt: ``s:`` + HMAC-SHA256(secret, coefficients [+ modes and scope]);
    None unsteered.

    Steered KV differs from plain KV for the same tokens, so requests with different coefficients must
    not share cached blocks. The salt is keyed with a server secret so that no client can compute the
    salt of someone else's steering and fill the cache under it (a public hash of the coefficients
    could be sent as a plain ``cache_salt`` by an unsteered request: cache poisoning).
    """
    if not np.any(coeffs) and not extra:
        return None
    key = salt_secret() if secret is None else secret
    data = np.ascontiguousarray(coeffs, dtype=np.float32).tobytes() + extra  # extra: modes and scope, if any
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
