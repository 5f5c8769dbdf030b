"""One offline vLLM engine generating a whole grid of steered requests in one ``generate`` call.

Run in its own process by ``emolab.evaluate.generation`` (``python -m emolab.evaluate.grid_job JOB
OUT``), with the emolab plugin configured through the environment (``ServeSettings.to_env``: the
bundle to steer with and its alpha scale). Every request carries its own steering
(``extra_args={"steering": [name, alpha]}``), so baseline and every condition share one batch.

Job JSON: ``{"engine": {LLM kwargs}, "max_new_tokens": int, "prompts": [[token ids], ...],
"requests": [[prompt index, name or null, alpha], ...], "stop_ids": [...]}``.
Output JSON: ``{"continuations": [[token ids], ...], "timings": {...}}`` (continuations cut before
the first stop token, in request order).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

__all__ = ["run_job"]


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Start the engine, generate every request greedily, return continuations and timings."""
    from vllm import LLM, SamplingParams

    began = time.perf_counter()
    llm = LLM(**job["engine"])
    timings = {"engine_start_s": time.perf_counter() - began}
    stops = set(job.get("stop_ids", []))
    params = []
    for _, name, alpha in job["requests"]:
        extra = {"steering": [name, float(alpha)]} if name is not None and alpha else None
        params.append(SamplingParams(temperature=0.0, max_tokens=job["max_new_tokens"], extra_args=extra))
    prompts = [{"prompt_token_ids": job["prompts"][p]} for p, _, _ in job["requests"]]
    began = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    timings["generate_s"] = time.perf_counter() - began
    continuations = []
    for output in outputs:
        tokens = list(output.outputs[0].token_ids)
        cut = next((k for k, token in enumerate(tokens) if token in stops), len(tokens))
        continuations.append(tokens[:cut])
    timings["generated_tokens"] = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"continuations": continuations, "timings": timings}


if __name__ == "__main__":
    import torch

    torch.set_num_threads(int(os.environ.get("EMOLAB_GRID_THREADS", "1")))
    with open(sys.argv[1]) as handle:
        result = run_job(json.load(handle))
    with open(sys.argv[2], "w") as handle:
        json.dump(result, handle)
