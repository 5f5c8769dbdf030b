"""The vLLM fast path: per-request steering inside vLLM's continuous batching, CUDA graphs on.

``plugin`` (the ``vllm.general_plugins`` entry point, ``register()``), ``batch`` (``BatchSteering``:
static buffers, graph-safe), ``adapters`` (every vLLM-version-specific detail), ``middleware``
(emolab's ASGI layer in front of vLLM's server) and ``server`` (``emolab serve --backend vllm``).
Nothing here is imported unless the vLLM backend is used.
"""

__all__: list[str] = []
