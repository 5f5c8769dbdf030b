"""``ServeSettings``: what a steering server is configured with, in one value.

The CLI builds it from flags; the vLLM plugin and middleware (other processes vLLM starts) read it
back from the environment, so ``to_env`` and ``from_env`` are the one place that names the variables.
The API key travels separately (``$EMOLAB_API_KEY``, read by ``emolab.serve.contract.resolve_api_key``)
and so does the cache-salt secret (``$EMOLAB_SALT_SECRET``, ``emolab.core.steering``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from emolab.core.bundle import ALPHA_SCALES
from emolab.core.errors import EmolabError
from emolab.core.steering import DEFAULT_MAX_ALPHA, DEFAULT_MAX_PAIRS, SteeringLimits

__all__ = ["ENV", "ServeSettings", "SettingsError"]

# setting -> environment variable
ENV = {
    "vectors": "EMOLAB_VECTORS",  # its presence switches the vLLM plugin on
    "alpha_scale": "EMOLAB_ALPHA_SCALE",
    "max_alpha": "EMOLAB_MAX_ALPHA",
    "max_pairs": "EMOLAB_MAX_PAIRS",
    "served_model_names": "EMOLAB_SERVED_MODEL_NAMES",  # comma-separated
    "backend": "EMOLAB_BACKEND",
}


class SettingsError(EmolabError, ValueError):
    """A server setting that cannot work."""


@dataclass(frozen=True)
class ServeSettings:
    vectors: str
    alpha_scale: str | None = None  # None: the bundle's own default scale
    max_alpha: float = DEFAULT_MAX_ALPHA
    max_pairs: int = DEFAULT_MAX_PAIRS
    served_model_names: tuple[str, ...] = field(default_factory=tuple)
    backend: str = "hf"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_alpha) and self.max_alpha > 0):
            raise SettingsError(f"the largest alpha must be a positive number, got {self.max_alpha}",
                                setting="max_alpha")
        if self.max_pairs < 1:
            raise SettingsError(f"at least one emotion/alpha pair must be allowed, got {self.max_pairs}",
                                setting="max_pairs")
        if self.alpha_scale is not None and self.alpha_scale not in ALPHA_SCALES:
            raise SettingsError(f"unknown alpha scale {self.alpha_scale!r}; choose from {list(ALPHA_SCALES)}",
                                setting="alpha_scale")

    @property
    def limits(self) -> SteeringLimits:
        return SteeringLimits(max_alpha=self.max_alpha, max_pairs=self.max_pairs)

    def to_env(self) -> dict[str, str]:
        env = {
            ENV["vectors"]: self.vectors,
            ENV["max_alpha"]: repr(float(self.max_alpha)),
            ENV["max_pairs"]: str(int(self.max_pairs)),
            ENV["served_model_names"]: ",".join(self.served_model_names),
            ENV["backend"]: self.backend,
        }
        if self.alpha_scale:
            env[ENV["alpha_scale"]] = self.alpha_scale
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings | None:
        """The settings a server process was started with; None when ``$EMOLAB_VECTORS`` is unset."""
        environ = os.environ if environ is None else environ
        vectors = environ.get(ENV["vectors"])
        if not vectors:
            return None

        def number(name: str, kind: type, default: float) -> float:
            text = environ.get(ENV[name])
            if text is None or text == "":
                return default
            try:
                return kind(text)
            except ValueError:
                raise SettingsError(f"${ENV[name]} must be a number, got {text!r}", setting=name) from None

        names = tuple(n for n in environ.get(ENV["served_model_names"], "").split(",") if n)
        return cls(
            vectors=vectors, alpha_scale=environ.get(ENV["alpha_scale"]) or None,
            max_alpha=number("max_alpha", float, DEFAULT_MAX_ALPHA), max_pairs=int(number("max_pairs", int, DEFAULT_MAX_PAIRS)),
            served_model_names=names, backend=environ.get(ENV["backend"], "vllm"),
        )
