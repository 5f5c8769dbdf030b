"""Run a GGUF model in the real llama.cpp library (libllama, through llama-cpp-python's ctypes bindings)
with control-vector files applied the way llama.cpp's own tools apply them.

This is what the tests and the docs' examples use to prove that an exported file steers llama.cpp at the
intended layers. ``llama-cli --control-vector-scaled f.gguf:s`` (in llama.cpp's ``common`` library, which
the Python bindings do not ship) reads each file and hands libllama one buffer; :func:`control_vector_buffer`
builds that buffer from the files by the same rule (``common/common.cpp``, ``common_control_vector_load``:
``direction.<n>`` times its scale is summed into row ``n - 1``), and libllama does the rest.

Needs the ``llamacpp`` extra (``pip install 'emolab[llamacpp]'``).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from emolab.export.gguf import read_control_vector

__all__ = ["LlamaCppError", "LlamaCppModel", "control_vector_buffer"]


class LlamaCppError(RuntimeError):
    """llama.cpp is missing, refused a model, or failed a call."""


def _bindings():
    try:
        import llama_cpp
    except ImportError as exc:
        raise LlamaCppError(
            f"llama.cpp's Python bindings are not installed ({exc}); pip install 'emolab[llamacpp]'"
        ) from None
    return llama_cpp


def control_vector_buffer(
    files: Iterable[tuple[str | Path, float]], n_layer: int, n_embd: int
) -> np.ndarray:
    """The ``[n_layer - 1, n_embd]`` float32 buffer for ``llama_set_adapter_cvec``: row ``n - 1`` holds the
    sum over files of ``scale * direction.<n>`` (llama.cpp's "buffer starting from layer 1")."""
    buffer = np.zeros((max(n_layer - 1, 0), n_embd), dtype=np.float32)
    for path, scale in files:
        for n, vector in read_control_vector(path).directions.items():
            if vector.shape != (n_embd,):
                raise LlamaCppError(f"{path}: direction.{n} has {vector.shape[0]} values, the model's n_embd is {n_embd}")
            if n >= n_layer:  # llama.cpp ignores rows past its last block; say so instead
                raise LlamaCppError(f"{path}: direction.{n} is past the model's last block ({n_layer - 1})")
            buffer[n - 1] += np.float32(scale) * vector
    return buffer


class LlamaCppModel:
    """One GGUF model and one context in libllama; greedy decoding on token ids, CPU. Use it in a ``with``
    block (or call :meth:`close`): the native model and context are freed there.

    Token ids come from the caller (the model's own tokenizer, e.g. transformers'), so a comparison with
    another backend feeds both exactly the same ids.
    """

    def __init__(self, model_path: str | Path, n_ctx: int = 512, n_threads: int | None = None,
                 verbose: bool = False) -> None:
        lc = _bindings()
        logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)
        self._lc = lc
        lc.llama_backend_init()
        model_params = lc.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self._model = lc.llama_model_load_from_file(str(model_path).encode(), model_params)
        if not self._model:
            raise LlamaCppError(f"llama.cpp could not load {model_path}")
        context_params = lc.llama_context_default_params()
        threads = n_threads or min(4, os.cpu_count() or 1)
        context_params.n_ctx = context_params.n_batch = context_params.n_ubatch = n_ctx
        context_params.n_threads = context_params.n_threads_batch = threads
        self._ctx = lc.llama_init_from_model(self._model, context_params)
        if not self._ctx:
            lc.llama_model_free(self._model)
            raise LlamaCppError(f"llama.cpp could not create a context for {model_path}")
        self.n_ctx = n_ctx
        self.n_layer = int(lc.llama_model_n_layer(self._model))
        self.n_embd = int(lc.llama_model_n_embd(self._model))
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self._vocab))

    # ------------------------------------------------------------------------- control vectors
    def set_control_vectors(self, files: Sequence[tuple[str | Path, float]],
                            layer_range: tuple[int, int] | None = None) -> None:
        """Apply control-vector files with scales, as ``--control-vector-scaled f:s,...`` (and
        ``--control-vector-layer-range START END``; default 1..n_layer, as llama.cpp's common code)."""
        buffer = control_vector_buffer(files, self.n_layer, self.n_embd)
        start, end = layer_range or (1, self.n_layer)
        self._cvec_buffer = np.ascontiguousarray(buffer)  # libllama copies it; keep it alive for the call anyway
        pointer = self._cvec_buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        if self._lc.llama_set_adapter_cvec(self._ctx, pointer, buffer.size, self.n_embd, start, end) != 0:
            raise LlamaCppError("llama_set_adapter_cvec refused the control vector")

    def clear_control_vectors(self) -> None:
        self._lc.llama_set_adapter_cvec(self._ctx, None, 0, self.n_embd, -1, -1)

    # ------------------------------------------------------------------------- decoding
    def _reset(self) -> None:
        self._lc.llama_memory_clear(self._lc.llama_get_memory(self._ctx), True)

    def _decode(self, token_ids: Sequence[int]) -> np.ndarray:
        tokens = (self._lc.llama_token * len(token_ids))(*token_ids)
        if self._lc.llama_decode(self._ctx, self._lc.llama_batch_get_one(tokens, len(token_ids))) != 0:
            raise LlamaCppError("llama_decode failed")
        logits = self._lc.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).copy()

    def next_token_logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits ``[n_vocab]`` after the prompt ``token_ids`` (fresh context each call)."""
        if not 0 < len(token_ids) <= self.n_ctx:
            raise LlamaCppError(f"prompt of {len(token_ids)} tokens does not fit a context of {self.n_ctx}")
        self._reset()
        return self._decode(list(token_ids))

    def generate_greedy(self, token_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of ``token_ids`` (argmax at each step), stopping at an end-of-generation token."""
        logits = self.next_token_logits(token_ids)
        generated: list[int] = []
        while len(generated) < max_new_tokens and len(token_ids) + len(generated) < self.n_ctx:
            token = int(np.argmax(logits))
            if self._lc.llama_vocab_is_eog(self._vocab, token):
                break
            generated.append(token)
            logits = self._decode([token])
        return generated

    # ------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self._lc.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            self._lc.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
