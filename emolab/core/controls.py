"""The request's steering controls beside its ``steering`` list: a scope, and a mode per emotion.

Parsing and the per-request plan (pure Python/numpy, validated in the API process); the operator that
applies a plan is ``emolab.core.steering_ops``, the fields' meaning is in ``emolab.core.steering``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emolab.core.errors import EmolabError

__all__ = [
    "MODES", "MODES_FIELD", "SCOPES", "SCOPE_FIELD", "RowPlan", "SteeringError", "control_fields", "lookup_emotion",
    "parse_modes", "parse_scope", "row_plan",
]

_INTEGER_ID = re.compile(r"[+-]?[0-9]{1,9}")  # ASCII digits only: "²" and "--1" are not ids


class SteeringError(EmolabError, ValueError):
    """A malformed steering request. ``param`` names the offending request field."""

    def __init__(self, message: str, param: str = "vllm_xargs.steering") -> None:
        super().__init__(message)
        self.param = param


SCOPES = ("all", "prompt", "generated")
MODES = ("add", "ablate", "clamp")
SCOPE_FIELD = "steering_scope"
MODES_FIELD = "steering_modes"


def control_fields(body: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """``{field: (raw value, its name in the request)}`` for the control fields a body carries."""
    xargs = body.get("vllm_xargs")
    xargs = xargs if isinstance(xargs, Mapping) else {}
    found = {}
    for name in (SCOPE_FIELD, MODES_FIELD):
        if name in xargs and name in body:
            raise SteeringError(f"give {name} once: either vllm_xargs.{name} or top-level {name}", param=name)
        if name in xargs:
            found[name] = (xargs[name], f"vllm_xargs.{name}")
        elif name in body:
            found[name] = (body[name], name)
    return found


def parse_scope(raw: Any, param: str = SCOPE_FIELD) -> str:
    """``"all"`` for None, else one of ``SCOPES``."""
    if raw is None:
        return "all"
    if not isinstance(raw, str) or raw.strip().lower() not in SCOPES:
        raise SteeringError(f"{param} must be one of {list(SCOPES)}, got {raw!r:.80}", param)
    return raw.strip().lower()


def parse_modes(raw: Any, emotions: Sequence[str], param: str = MODES_FIELD) -> tuple[tuple[int, str], ...]:
    """``[emotion, mode, ...]`` (names or ids) or ``{emotion: mode}`` into sorted ``((id, mode), ...)``.

    ``add`` entries are dropped (it is the default); naming an emotion twice is refused.
    """
    if raw is None:
        return ()
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, list):
        if len(raw) % 2:
            raise SteeringError(f"{param} must hold emotion/mode pairs; got an odd number of items ({len(raw)})", param)
        items = [(raw[k], raw[k + 1]) for k in range(0, len(raw), 2)]
    else:
        raise SteeringError(f"{param} must be a flat list [emotion, mode, ...], got {type(raw).__name__}", param)
    names = {name: i for i, name in enumerate(emotions)}
    modes: dict[int, str] = {}
    for k, (ident, mode) in enumerate(items):
        where = f"{param}[{2 * k}]"
        emotion_id = lookup_emotion(ident, names, emotions, where, param)
        if not isinstance(mode, str) or mode.strip().lower() not in MODES:
            raise SteeringError(f"{param}[{2 * k + 1}]: mode must be one of {list(MODES)}, got {mode!r:.80}", param)
        if emotion_id in modes:
            raise SteeringError(f"{where}: {emotions[emotion_id]} is given a mode twice", param)
        modes[emotion_id] = mode.strip().lower()
    return tuple(sorted((e, m) for e, m in modes.items() if m != "add"))


def lookup_emotion(ident: Any, names: Mapping[str, int], emotions: Sequence[str], where: str, param: str) -> int:
    """An emotion named by name or id (an integral float too: vLLM may turn 2 into 2.0 on the way)."""
    if isinstance(ident, bool):
        raise SteeringError(f"{where}: emotion must be an id or a name, got a boolean", param)
    if isinstance(ident, str):
        key = ident.strip().lower()
        if key in names:
            return names[key]
        if not _INTEGER_ID.fullmatch(key):
            raise SteeringError(f"{where}: unknown emotion {ident!r}; known: {list(emotions)}", param)
        emotion_id = int(key)
    elif isinstance(ident, int):
        emotion_id = ident
    elif isinstance(ident, float) and ident.is_integer():
        emotion_id = int(ident)
    else:
        raise SteeringError(f"{where}: emotion must be an integer id or a name, got {ident!r}", param)
    if not 0 <= emotion_id < len(emotions):
        raise SteeringError(f"{where}: unknown emotion id {emotion_id}; ids are 0..{len(emotions) - 1}", param)
    return emotion_id


@dataclass(frozen=True)
class RowPlan:
    """What one request does at every chosen layer: alphas to add, and which emotions are held where."""

    add: np.ndarray  # [n] alpha per add-mode emotion (0 elsewhere)
    constrained: np.ndarray  # [n] bool: clamp or ablate
    target: np.ndarray  # [n] clamp level on the alpha scale (0 for ablate and unconstrained)

    @property
    def steers(self) -> bool:
        return bool(np.any(self.add) or np.any(self.constrained))


def row_plan(pairs: Sequence[tuple[int, float]], modes: Sequence[tuple[int, str]], n: int,
             param: str = MODES_FIELD, names: Sequence[str] | None = None) -> RowPlan:
    """The plan of ``steering`` pairs under ``modes``; a clamp needs its target in the pairs, an ablate none.
    ``names`` (the emotions) word the errors."""
    label = (lambda e: names[e]) if names else (lambda e: f"emotion {e}")  # noqa: E731
    alphas = np.zeros(n, dtype=np.float64)
    named = set()
    for emotion_id, alpha in pairs:
        alphas[emotion_id] += alpha
        named.add(emotion_id)
    add, target = alphas.copy(), np.zeros(n, dtype=np.float64)
    constrained = np.zeros(n, dtype=bool)
    for emotion_id, mode in modes:
        if mode == "clamp":
            if emotion_id not in named:
                raise SteeringError(f"{param}: clamp needs a target level: give {label(emotion_id)}'s alpha in "
                                    "steering", param)
            target[emotion_id] = alphas[emotion_id]
        elif mode == "ablate" and alphas[emotion_id] != 0:
            raise SteeringError(f"{param}: {label(emotion_id)} is ablated and also given alpha "
                                f"{alphas[emotion_id]:g} in steering; an ablated emotion takes no alpha", param)
        add[emotion_id] = 0.0
        constrained[emotion_id] = True
    if not all(math.isfinite(x) for x in add):
        raise SteeringError("steering alphas must be finite", param)
    return RowPlan(add.astype(np.float32), constrained, target.astype(np.float32))


