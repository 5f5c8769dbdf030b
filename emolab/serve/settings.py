"""``ServeSettings``: what a steering server is configured with, in one value.

The CLI builds it from flags; the vLLM plugin and middleware (other processes vLLM starts) read it
back from the environment, so ``to_env`` and ``from_env`` are the one place that names the variables.
``hf_max_batch`` / ``hf_max_batch_tokens`` bound the HF backend's batch (they stay in this process: the
vLLM backend has its own scheduler). ``served_model_names`` is the one list of names a server answers to (``emolab.core.names.served_model_names``
derives it from ``--model`` and ``--served-model-name``); both backends read it from here. ``model_check``
says what to do when the bundle was extracted from another model than the served one: ``warn`` (the
default), ``strict`` (refuse to start) or ``off`` (the launcher has checked already).
The API key travels separately (``$EMOLAB_API_KEY``, read by ``emolab.serve.contract.resolve_api_key``)
and so does the cache-salt secret (``$EMOLAB_SALT_SECRET``, ``emolab.core.steering``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from emolab.core.bundle import ALPHA_SCALES, EmotionBundle, ModelMismatchError
from emolab.core.errors import EmolabError
from emolab.core.steering import DEFAULT_MAX_ALPHA, DEFAULT_MAX_PAIRS, SteeringLimits

__all__ = ["DEFAULT_HF_MAX_BATCH", "DEFAULT_HF_MAX_BATCH_TOKENS", "ENV", "MODEL_CHECKS", "ServeSettings", "SettingsError",
           "check_bundle_model"]

# setting -> environment variable
ENV = {
    "vectors": "EMOLAB_VECTORS",  # its presence switches the vLLM plugin on
    "alpha_scale": "EMOLAB_ALPHA_SCALE",
    "max_alpha": "EMOLAB_MAX_ALPHA",
    "max_pairs": "EMOLAB_MAX_PAIRS",
    "served_model_names": "EMOLAB_SERVED_MODEL_NAMES",  # comma-separated
    "backend": "EMOLAB_BACKEND",
    "model_check": "EMOLAB_MODEL_CHECK",  # warn | strict | off
    "chat": "EMOLAB_CHAT",  # 0: the model has no chat template and none was given (chat requests get a 400)
    "chat_template": "EMOLAB_CHAT_TEMPLATE",  # a chat template file given by the user
}
MODEL_CHECKS = ("warn", "strict", "off")
# The HF backend's batch (emolab.serve.hf_batch): requests generating together, and key/value positions held
# (rows x the longest row's prompt + max_tokens). 16384 positions of an 8B model in bf16 are about 2.4 GB.
DEFAULT_HF_MAX_BATCH = 32
DEFAULT_HF_MAX_BATCH_TOKENS = 16384


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
    model_check: str = "warn"
    hf_max_batch: int = DEFAULT_HF_MAX_BATCH  # HF backend only; 1 = one request at a time
    hf_max_batch_tokens: int = DEFAULT_HF_MAX_BATCH_TOKENS
    chat: bool = True  # False: no chat template (a base model, none given): /v1/chat/completions answers 400
    chat_template: str | None = None  # a Jinja chat template file that replaces (or supplies) the model's

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
        for name in ("hf_max_batch", "hf_max_batch_tokens"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}",
                                    setting=name)
        if self.model_check not in MODEL_CHECKS:
            raise SettingsError(f"unknown model check {self.model_check!r}; choose from {list(MODEL_CHECKS)}",
                                setting="model_check")

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
            ENV["model_check"]: self.model_check,
            ENV["chat"]: "1" if self.chat else "0",
        }
        if self.alpha_scale:
            env[ENV["alpha_scale"]] = self.alpha_scale
        if self.chat_template:
            env[ENV["chat_template"]] = self.chat_template
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
            model_check=(environ.get(ENV["model_check"]) or "warn").strip().lower(),
            chat=environ.get(ENV["chat"], "1").strip() != "0", chat_template=environ.get(ENV["chat_template"]) or None,
        )


def check_bundle_model(bundle: EmotionBundle, served_model: str, model_check: str) -> str | None:
    """Compare the bundle's ``model`` with the served model: None when they agree (or the check is off);
    the mismatch, for the caller to warn about, under ``warn``; ``ModelMismatchError`` under ``strict``."""
    if model_check == "off":
        return None
    problem = bundle.model_mismatch(served_model)
    if problem and model_check == "strict":
        raise ModelMismatchError(problem, setting="model_check")
    return problem
