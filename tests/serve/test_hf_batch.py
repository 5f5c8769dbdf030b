"""The HF backend's continuous batching, in-process on SmolLM2 (fp32, the committed bundle): batch == solo.

Every request of a batch (different steering, prompt lengths, max_tokens, stop strings, logprobs, seeded
sampling, ignore_eos, one joining while the others run, one cancelled half-way) gets what it gets alone from
the one-at-a-time backend (``max_batch=1``: ``model.generate``): the same tokens, text, finish reason and
usage. Logprobs agree to ``BATCH_TOLERANCE`` (the bound HF and vLLM logprobs are held to): beside other rows,
matrix products of another shape and the padding mask change fp32 rounding (measured max |difference| 1.1e-5
over these replies, 7.1e-5 over four 24-token greedy rows in an earlier check; a row alone is bit-identical to
``model.generate``, compared exactly in tests/steer/test_rows.py). Greedy tokens are asserted identical: a
near-tie within that rounding could flip one, which these prompts do not have. Memory: the batch never holds
more rows or key/value positions (read from the cache's tensors) than its limits.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from emolab.serve.generation import Delta, GenerationParams, GenerationResult
from emolab.serve.hf_backend import HFBackend

pytestmark = pytest.mark.slow
BATCH_TOLERANCE = 1e-4
MESSAGES = ["Tell me about your weekend.", "What is the capital of France? Answer in detail, with its history.",
            "Say hi.", "Write a short poem about the sea and the wind.", "List three fruits."]


@pytest.fixture(scope="module")
def backends(smollm2_hf):
    model, tokenizer, steerer = smollm2_hf
    serial = HFBackend(model, tokenizer, steerer, max_batch=1)
    batched = HFBackend(model, tokenizer, steerer, max_batch=8)
    assert serial.scheduler is None and batched.scheduler is not None and batched.batching_note is None
    yield serial, batched
    batched.shutdown()
    serial.shutdown()


def steering(backend: HFBackend, **alphas: float) -> np.ndarray:
    emotions = backend.steerer.bundle.emotions
    return np.array([alphas.get(e, 0.0) for e in emotions], dtype=np.float32)


def params(backend: HFBackend, message: int, max_tokens: int, **fields) -> GenerationParams:
    prompt = backend.chat_prompt([{"role": "user", "content": MESSAGES[message]}])
    return GenerationParams(prompt_ids=prompt, max_tokens=max_tokens, **{"temperature": 0.0, "top_p": 1.0, **fields})


def requests(backend: HFBackend) -> list[GenerationParams]:
    return [
        params(backend, 0, 24),
        params(backend, 1, 12, coeffs=steering(backend, fear=1.5), logprobs=3),
        params(backend, 2, 40),  # ends on EOS well before 40
        params(backend, 2, 40, ignore_eos=True, coeffs=steering(backend, joy=1.0)),  # runs through EOS to 40
        params(backend, 3, 30, coeffs=steering(backend, sadness=2.0, anger=-1.0), stop=["\n"]),
        params(backend, 4, 20, temperature=0.9, top_p=0.9, seed=1234, coeffs=steering(backend, surprise=1.0)),
        params(backend, 0, 16, temperature=1.0, seed=7, logprobs=0),
    ]


async def collect(stream, started: asyncio.Event | None = None) -> tuple[list[Delta], GenerationResult]:
    deltas = []
    async for item in stream:
        if isinstance(item, GenerationResult):
            return deltas, item
        deltas.append(item)
        if started is not None and len(deltas) == 3:
            started.set()
    raise AssertionError("the stream ended without a result")


def logprob_gap(a: GenerationResult, b: GenerationResult) -> float:
    assert (a.logprobs is None) == (b.logprobs is None)
    if a.logprobs is None:
        return 0.0
    assert [s.ids for s in a.logprobs] == [s.ids for s in b.logprobs]  # same tokens, same top alternatives
    assert [s.tokens for s in a.logprobs] == [s.tokens for s in b.logprobs]
    return max((abs(x - y) for s, t in zip(a.logprobs, b.logprobs, strict=True)
                for x, y in zip(s.logprobs, t.logprobs, strict=True)), default=0.0)


def assert_same(solo: GenerationResult, batched: GenerationResult) -> float:
    assert batched.token_ids == solo.token_ids
    assert (batched.text, batched.finish_reason, batched.prompt_tokens, batched.completion_tokens) == \
        (solo.text, solo.finish_reason, solo.prompt_tokens, solo.completion_tokens)
    return logprob_gap(solo, batched)


def test_a_batch_with_a_late_joiner_equals_each_request_alone(backends):
    serial, batched = backends
    batch = requests(batched)
    late = params(batched, 1, 10, coeffs=steering(batched, disgust=1.0, fear=-0.5), logprobs=5, stop=["Paris"])
    solo = [asyncio.run(serial.complete(p)) for p in [*batch, late]]
    assert solo[2].finish_reason == "stop" and solo[2].completion_tokens < 40  # EOS reached alone ...
    assert solo[3].finish_reason == "length" and solo[3].completion_tokens == 40  # ... and ignored when asked
    stats = batched.scheduler.stats
    joined_before = stats.joined_running

    async def run() -> list[tuple[list[Delta], GenerationResult]]:
        started = asyncio.Event()
        first = [asyncio.create_task(collect(batched.stream(p), started if i == 0 else None))
                 for i, p in enumerate(batch)]
        await started.wait()  # the batch is generating: the last request joins it half-way
        return await asyncio.gather(*first, collect(batched.stream(late)))

    got = asyncio.run(run())
    gaps = [assert_same(s, result) for s, (_, result) in zip(solo, got, strict=True)]
    for deltas, result in got:  # the stream adds up to the reply, one logprobs entry per token
        assert "".join(d.text for d in deltas) == result.text
        if result.logprobs is not None:
            assert [s for d in deltas for s in d.logprobs] == result.logprobs
    print(f"batch vs solo: max |logprob difference| {max(gaps):.2e}")
    assert max(gaps) <= BATCH_TOLERANCE
    assert stats.joined_running > joined_before and stats.peak_rows >= len(batch)
    unsteered = asyncio.run(serial.complete(params(serial, 3, 30, stop=["\n"])))
    assert unsteered.token_ids != solo[4].token_ids  # the steering of that row mattered


def test_memory_limits_hold_and_a_request_alone_always_runs(smollm2_hf):
    model, tokenizer, steerer = smollm2_hf
    serial = HFBackend(model, tokenizer, steerer, max_batch=1)
    lengths = [len(params(serial, i % 5, 1).prompt_ids) for i in range(5)]
    widest = max(lengths) + 12
    budget = 2 * widest  # room for two rows of the widest request: fewer than max_batch=3 at times
    limited = HFBackend(model, tokenizer, steerer, max_batch=3, max_batch_tokens=budget)
    try:
        batch = [params(limited, i % 5, 8 + i % 5, coeffs=steering(limited, fear=0.5 * (i % 3))) for i in range(7)]
        huge = params(limited, 1, budget)  # alone it exceeds the budget, and still runs (by itself)
        solo = [asyncio.run(serial.complete(p)) for p in [*batch, huge]]

        async def run() -> list[GenerationResult]:
            return await asyncio.gather(*(limited.complete(p) for p in [*batch, huge]))

        got = asyncio.run(run())
        for s, g in zip(solo, got, strict=True):
            assert_same(s, g)
        stats = limited.scheduler.stats
        assert 2 <= stats.peak_rows <= 3
        assert stats.peak_slots <= max(budget, len(huge.prompt_ids) + huge.max_tokens)
        assert stats.prefills >= 3  # the seven small ones could not all start together
    finally:
        limited.shutdown()


def test_a_cancelled_row_leaves_and_the_others_are_untouched(backends):
    serial, batched = backends
    keep = [params(batched, 0, 20, coeffs=steering(batched, joy=1.0)), params(batched, 3, 20)]
    solo = [asyncio.run(serial.complete(p)) for p in keep]

    async def run():
        long = batched.stream(params(batched, 1, 200))
        others = [asyncio.create_task(collect(batched.stream(p))) for p in keep]
        seen = 0
        async for item in long:
            seen += isinstance(item, Delta)
            if seen == 3:
                break
        await long.aclose()  # the client went away: its row leaves at the next step
        return await asyncio.gather(*others)

    got = asyncio.run(run())
    for s, (_, g) in zip(solo, got, strict=True):
        assert_same(s, g)
    assert batched.pending == 0


def test_the_serial_worker_is_model_generate_one_at_a_time(backends):
    serial, _ = backends
    assert serial.max_batch == 1 and serial.scheduler is None
    order: list[str] = []
    lock = threading.Lock()

    def tracker(name):
        def emit(delta):
            with lock:
                order.append(name)
        return emit

    futures = [serial._submit(params(serial, i, 4), tracker(str(i)), threading.Event()) for i in range(3)]
    results = [f.result(timeout=300) for f in futures]
    assert all(r.completion_tokens == 4 for r in results)
    assert order == sorted(order)  # one request after the other: no interleaving
