"""Generate and score a grid of steered requests: vLLM offline (one engine, one batch) or the HF loop.

A request is ``(prompt index, emotion or None, alpha)`` against a saved bundle folder. ``vllm`` runs
``emolab.evaluate.grid_job`` in a subprocess with the plugin pointed at the bundle (every request
steered on its own, all in one ``generate`` call); ``hf`` runs ``emolab.steer.generate`` in process
with one coefficient row per request. Both are greedy, so both give the same texts up to floating
point. ``score`` adds the judge, perplexity under the unsteered model, and the text statistics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from emolab.core.errors import EmolabError
from emolab.evaluate.metrics import continuation_perplexity, distinct_n, ends_with_question, is_degenerate, words

__all__ = ["BACKENDS", "GenerationError", "generate_requests", "pick_backend", "score"]

BACKENDS = ("auto", "vllm", "hf")


class GenerationError(EmolabError, RuntimeError):
    """A generation backend that is missing or failed."""


def pick_backend(backend: str, model_path: str | None = None) -> str:
    """``auto``: vLLM when it is installed (and, given ``model_path``, when its fast path serves that model),
    else the HF loop."""
    if backend not in BACKENDS:
        raise GenerationError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}", setting="backend")
    if backend != "auto":
        return backend
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "hf"
    if model_path is not None:
        from emolab.fastpath.server import vllm_support

        return "vllm" if vllm_support(model_path)[0] else "hf"
    return "vllm"


def generate_requests(
    backend: str, bundle: str | Path, scale: str | None, model_path: str, prompt_ids: list[list[int]],
    requests: list[tuple[int, str | None, float]], *, max_new_tokens: int, stop_ids: list[int], model: Any = None,
    tokenizer: Any = None, batch_size: int = 64, threads: int = 1, engine: dict[str, Any] | None = None,
) -> tuple[list[list[int]], dict[str, float]]:
    """Continuation token ids per request (cut before the first stop token) and timings."""
    if pick_backend(backend) == "vllm":
        return _vllm(bundle, scale, model_path, prompt_ids, requests, max_new_tokens, stop_ids, threads, engine)
    from emolab.core.bundle import EmotionBundle
    from emolab.steer import HFSteerer, generate

    loaded = EmotionBundle.load(bundle, load_full_sweep=False)
    coeffs = np.zeros((len(requests), len(loaded.emotions)), dtype=np.float32)
    for row, (_, name, alpha) in enumerate(requests):
        if name is not None:
            coeffs[row, loaded.emotions.index(name)] = alpha
    steerer = HFSteerer(model, loaded, alpha_scale=loaded.resolve_alpha_scale(scale))
    began = time.perf_counter()
    out = generate(model, tokenizer, [prompt_ids[p] for p, _, _ in requests], steerer=steerer, coeffs=coeffs,
                   max_new_tokens=max_new_tokens, batch_size=batch_size)
    took = time.perf_counter() - began
    return out, {"generate_s": took, "generated_tokens": float(sum(len(c) for c in out))}


def _vllm(bundle: str | Path, scale: str | None, model_path: str, prompt_ids: list[list[int]],
          requests: list[tuple[int, str | None, float]], max_new_tokens: int, stop_ids: list[int], threads: int,
          engine: dict[str, Any] | None) -> tuple[list[list[int]], dict[str, float]]:
    from emolab.serve.settings import ServeSettings

    longest = max(len(p) for p in prompt_ids) + max_new_tokens
    engine = {"model": model_path, "dtype": "float32", "enforce_eager": True, "seed": 0,
              "max_model_len": max(256, 64 * -(-longest // 64)), "max_num_seqs": 256,
              "max_num_batched_tokens": 4096, **(engine or {})}
    settings = ServeSettings(vectors=str(Path(bundle).resolve()), alpha_scale=scale, backend="vllm")
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "2",
           "OMP_NUM_THREADS": str(threads), "EMOLAB_GRID_THREADS": str(threads), **settings.to_env()}
    with tempfile.TemporaryDirectory(prefix="emolab-grid-") as tmp:
        job_path, out_path, log_path = Path(tmp) / "job.json", Path(tmp) / "out.json", Path(tmp) / "engine.log"
        job_path.write_text(json.dumps({"engine": engine, "max_new_tokens": max_new_tokens, "prompts": prompt_ids,
                                        "requests": requests, "stop_ids": stop_ids}))
        began = time.perf_counter()
        with open(log_path, "w") as log:
            code = subprocess.call([sys.executable, "-m", "emolab.evaluate.grid_job", str(job_path), str(out_path)],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        if code:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise GenerationError(f"the vLLM grid engine failed (exit {code}):\n{tail}")
        result = json.loads(out_path.read_text())
    timings = {k: float(v) for k, v in result["timings"].items()}
    timings["engine_wall_s"] = time.perf_counter() - began
    return result["continuations"], timings


def score(texts: list[str], prompt_ids: list[list[int]], continuation_ids: list[list[int]], *, model: Any,
          judge: Any, perplexity: bool = True, batch_size: int = 16,
          embeddings: bool = False) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-continuation arrays: ``proba`` [n, judge emotions], ``ppl``, ``degenerate``, ``question``,
    ``distinct_1``, ``distinct_2``, ``n_tokens``; with ``embeddings``, also ``embedding`` [n, 384]: the judge's
    sentence embeddings the probabilities were read from (unit length)."""
    timings: dict[str, float] = {}
    began = time.perf_counter()
    vectors = judge.encoder.encode(texts) if embeddings and texts else None
    proba = np.asarray(judge.predict_proba(texts) if vectors is None else judge.proba_from_embeddings(vectors),
                       dtype=np.float64)
    timings["judge_s"] = time.perf_counter() - began
    began = time.perf_counter()
    if perplexity:
        ppl = np.asarray(continuation_perplexity(model, prompt_ids, continuation_ids, batch_size=batch_size))
    else:
        ppl = np.full(len(texts), np.nan)
    timings["perplexity_s"] = time.perf_counter() - began
    tokens = [words(t) for t in texts]
    arrays = {
        "proba": proba, "ppl": ppl,
        "degenerate": np.array([is_degenerate(t) for t in tokens], dtype=bool),
        "question": np.array([ends_with_question(t) for t in texts], dtype=bool),
        "distinct_1": np.array([distinct_n(t, 1) for t in tokens]),
        "distinct_2": np.array([distinct_n(t, 2) for t in tokens]),
        "n_tokens": np.array([len(c) for c in continuation_ids]),
    }
    if embeddings:
        arrays["embedding"] = vectors if vectors is not None else np.zeros((0, 0), dtype=np.float32)
    return arrays, timings
