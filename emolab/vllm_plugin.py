"""vLLM plugin entry point (``vllm.general_plugins``): per-request emotion steering.

vLLM calls :func:`register` in every process it starts (API server, engine core, workers). It is
idempotent and does nothing unless ``EMOLAB_VECTORS`` names a bundle folder, so installing emolab
never changes a plain vLLM. The bundle reaches the workers by that path (environment variables are
inherited by spawned processes), never as pickled state.

Settings (set by ``emolab serve --backend vllm``):

``EMOLAB_VECTORS``      bundle folder (activates the plugin)
``EMOLAB_ALPHA_SCALE``  ``raw`` (default) or ``normalized``
``EMOLAB_MAX_ALPHA``    bound on |alpha| (default 10)
``EMOLAB_MAX_PAIRS``    bound on emotion/alpha pairs per request (default 16)
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

logger = logging.getLogger("emolab.vllm")

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
_registered = False


def register() -> None:
    """Hook worker model loading so steering is attached right after the weights are in."""
    global _registered
    if _registered or not os.environ.get("EMOLAB_VECTORS"):
        return
    import vllm
    from vllm.v1.worker import gpu_worker  # CPUWorker and the V2 runner's worker both inherit it

    from emolab.vllm_adapters import check_version

    check_version(vllm.__version__)
    original = gpu_worker.Worker.load_model
    if not getattr(original, "_emolab_wrapped", False):

        @functools.wraps(original)
        def load_model(self, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            # Weights are loaded; torch.compile and CUDA-graph capture have not happened yet, so
            # hooks and static buffers installed now are traced and captured with the model.
            install(self.model_runner)

        load_model._emolab_wrapped = True  # type: ignore[attr-defined]
        gpu_worker.Worker.load_model = load_model
    _wrap_input_processor()
    _registered = True


def _wrap_input_processor() -> None:
    """Validate steering and salt the prefix cache where every request enters the engine.

    ``InputProcessor.process_inputs`` runs in the front-end process for the HTTP server and for the
    offline ``LLM`` class alike, so invalid steering is refused (a ValueError, HTTP 400) before it is
    scheduled, and every request's KV blocks are hashed with a ``cache_salt`` that combines the client's
    own salt (in its own namespace) with a keyed steering salt: different steerings never share cached
    KV, no client can forge another steering's salt, unsteered requests share as before.
    """
    from vllm.v1.engine import input_processor

    original = input_processor.InputProcessor.process_inputs
    if getattr(original, "_emolab_wrapped", False):
        return

    @functools.wraps(original)
    def process_inputs(self, request_id, prompt, params, *args: Any, **kwargs: Any):
        request = original(self, request_id, prompt, params, *args, **kwargs)
        from emolab.steering import combine_cache_salt

        salt = _steering_salt(getattr(params, "extra_args", None))
        request.cache_salt = combine_cache_salt(request.cache_salt, salt)
        return request

    process_inputs._emolab_wrapped = True  # type: ignore[attr-defined]
    input_processor.InputProcessor.process_inputs = process_inputs


@functools.lru_cache(maxsize=1)
def _request_contract() -> tuple[list[str], Any]:
    """The bundle's emotions and the steering limits, read once per process (requests' hot path)."""
    from emolab.bundle import EmotionBundle

    settings = settings_from_env()
    return list(EmotionBundle.load(settings["vectors"], load_full_sweep=False).emotions), settings["limits"]


def _steering_salt(extra_args: dict | None) -> str | None:
    """The cache salt of a request's steering; raises ValueError (HTTP 400) when it is malformed."""
    from emolab.steering import coefficients, parse_steering, steering_field, steering_salt

    found = steering_field(extra_args or {})
    if found is None:
        return None
    emotions, limits = _request_contract()
    raw, param = found
    pairs = parse_steering(raw, emotions, limits, param=f"vllm_xargs.{param}")  # SteeringError is a ValueError
    return steering_salt(coefficients(pairs, len(emotions)))


def settings_from_env() -> dict[str, Any]:
    from emolab.steering import DEFAULT_MAX_ALPHA, DEFAULT_MAX_PAIRS, SteeringLimits

    return {
        "vectors": os.environ["EMOLAB_VECTORS"],
        "alpha_scale": os.environ.get("EMOLAB_ALPHA_SCALE", "raw"),
        "limits": SteeringLimits(
            max_alpha=float(os.environ.get("EMOLAB_MAX_ALPHA", DEFAULT_MAX_ALPHA)),
            max_pairs=int(os.environ.get("EMOLAB_MAX_PAIRS", DEFAULT_MAX_PAIRS)),
        ),
    }


def install(runner: Any) -> None:
    """Attach per-request steering to a loaded model runner."""
    from emolab.bundle import EmotionBundle
    from emolab.vllm_adapters import attach_to_runner
    from emolab.vllm_steering import BatchSteering

    settings = settings_from_env()
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    arch = type(model).__name__
    if arch not in SUPPORTED_ARCHITECTURES:
        raise RuntimeError(
            f"emolab vLLM steering supports {', '.join(SUPPORTED_ARCHITECTURES)}; this model is {arch}. "
            "Use `emolab serve --backend hf` for other architectures."
        )
    layers = model.model.layers
    bundle = EmotionBundle.load(settings["vectors"], load_full_sweep=False)
    bundle.check_model(len(layers), int(model.config.hidden_size))
    param = next(model.parameters())
    # Under pipeline parallelism a rank holds only some blocks; it steers the ones it holds.
    local = [
        (i, layers[layer]) for i, layer in enumerate(bundle.chosen_layers) if type(layers[layer]).__name__ != "PPMissingLayer"
    ]
    basis = bundle.steering_basis(settings["alpha_scale"])[[i for i, _ in local]]
    config = runner.vllm_config
    capture = getattr(config.compilation_config, "max_cudagraph_capture_size", None) or 0
    max_tokens = max(int(runner.max_num_tokens), int(capture))
    steering = BatchSteering(
        [layer for _, layer in local], bundle, basis,
        max_tokens=max_tokens, max_rows=2 * int(config.scheduler_config.max_num_seqs) + 8,
        device=param.device, dtype=param.dtype, limits=settings["limits"],
    )
    kind = attach_to_runner(runner, steering)
    logger.warning(
        "emolab steering on: %d emotions %s at layers %s (%s scale), model runner %s, %s, buffers for %d tokens",
        len(bundle.emotions), bundle.emotions, [bundle.chosen_layers[i] for i, _ in local], settings["alpha_scale"],
        kind.upper(), "eager" if config.model_config.enforce_eager else "compiled/graphs", max_tokens,
    )

