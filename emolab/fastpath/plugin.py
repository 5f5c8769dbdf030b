"""vLLM plugin entry point (``vllm.general_plugins``): per-request emotion steering.

vLLM calls :func:`register` in every process it starts (API server, engine core, workers). It is
idempotent and does nothing unless ``$EMOLAB_VECTORS`` names a bundle folder, so installing emolab
never changes a plain vLLM. The bundle reaches the workers by that path (environment variables are
inherited by spawned processes), never as pickled state. The settings are ``ServeSettings.from_env``
(``emolab serve --backend vllm`` sets them; so can a user of plain ``vllm serve``).

Everything that touches vLLM's internals goes through ``emolab.fastpath.adapters``.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from emolab.core.bundle import EmotionBundle
from emolab.core.models import FASTPATH_ARCHITECTURES, decoder_layers
from emolab.core.steering import (
    SALT_SECRET_ENV,
    Steering,
    SteeringLimits,
    combine_cache_salt,
    new_salt_secret,
    steering_field,
)
from emolab.serve.settings import ENV, ServeSettings, check_bundle_model

__all__ = ["install", "register"]

logger = logging.getLogger("emolab.vllm")
_registered = False


def register() -> None:
    """Hook worker model loading (steering) and request intake (validation, cache salts); idempotent."""
    global _registered
    if _registered or ServeSettings.from_env() is None:
        return
    from emolab.fastpath import adapters

    adapters.check_version(adapters.installed_version())
    # vLLM loads plugins in the launcher before it spawns API servers (`vllm serve --api-server-count N`):
    # a secret drawn here is inherited by each, so a steering's cache salt is the same in all of them.
    os.environ.setdefault(SALT_SECRET_ENV, new_salt_secret())
    adapters.patch_worker_load_model(install)
    adapters.patch_input_processor(_cache_salt)
    _registered = True


@functools.lru_cache(maxsize=1)
def _request_contract() -> tuple[list[str], SteeringLimits]:
    """The bundle's emotions and the steering limits, read once per process (requests' hot path)."""
    settings = _settings()
    return list(EmotionBundle.load(settings.vectors, load_full_sweep=False).emotions), settings.limits


def _settings() -> ServeSettings:
    settings = ServeSettings.from_env()
    if settings is None:  # register() checked; only reachable if the environment changed since
        raise RuntimeError("the emolab plugin runs without $EMOLAB_VECTORS")
    return settings


def _cache_salt(client_salt: str | None, params: Any) -> str | None:
    """A request's prefix-cache salt: its client's own salt (namespaced) plus a keyed steering salt.

    Different steerings never share cached KV, no client can forge another steering's salt, and
    unsteered requests without a salt share the cache as before. Malformed steering raises
    ``SteeringError`` (a ValueError: HTTP 400 before the request is scheduled).
    """
    found = steering_field(getattr(params, "extra_args", None) or {})
    if found is None:
        return combine_cache_salt(client_salt, None)
    emotions, limits = _request_contract()
    raw, param = found
    steering = Steering.parse(raw, emotions, limits, param=f"vllm_xargs.{param}")
    return combine_cache_salt(client_salt, steering.salt(len(emotions)))


def install(runner: Any) -> None:
    """Attach per-request steering to a loaded model runner (called in each worker)."""
    from emolab.fastpath.adapters import (
        attach_to_runner,
        is_missing_layer,
        runner_description,
        runner_limits,
        runner_model,
        runner_model_name,
    )
    from emolab.fastpath.batch import BatchSteering

    settings = _settings()
    model = runner_model(runner)
    arch = type(model).__name__
    if arch not in FASTPATH_ARCHITECTURES:
        raise RuntimeError(
            f"emolab vLLM steering supports {', '.join(FASTPATH_ARCHITECTURES)}; this model is {arch}. "
            "Use `emolab serve --backend hf` for other architectures."
        )
    layers = decoder_layers(model)
    bundle = EmotionBundle.load(settings.vectors, load_full_sweep=False)
    bundle.check_model(len(layers), int(model.config.hidden_size))
    # Plain `vllm serve` / `LLM(...)` users get the name check here (emolab serve did it before vLLM started).
    problem = check_bundle_model(bundle, runner_model_name(runner), settings.model_check)
    if problem:
        logger.warning("emolab: %s (set %s=strict to refuse such a pair)", problem, ENV["model_check"])
    param = next(model.parameters())
    # Under pipeline parallelism a rank holds only some blocks; it steers the ones it holds.
    local = [(i, layers[layer]) for i, layer in enumerate(bundle.chosen_layers) if not is_missing_layer(layers[layer])]
    scale = bundle.resolve_alpha_scale(settings.alpha_scale)
    basis = bundle.steering_basis(scale)[[i for i, _ in local]]
    max_tokens, max_seqs = runner_limits(runner)
    steering = BatchSteering(
        [layer for _, layer in local], bundle, basis, max_tokens=max_tokens, max_rows=2 * max_seqs + 8,
        device=param.device, dtype=param.dtype, limits=settings.limits,
    )
    attach_to_runner(runner, steering)
    logger.warning(
        "emolab steering on: %d emotions %s at layers %s (%s scale), %s, buffers for %d tokens",
        len(bundle.emotions), bundle.emotions, [bundle.chosen_layers[i] for i, _ in local], scale,
        runner_description(runner), max_tokens,
    )
