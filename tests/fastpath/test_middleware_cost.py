"""What emolab's middleware costs per request, in-process, on the body the bench sends (a ~190-token chat
prompt, streaming, ``ignore_eos``, a two-emotion steering): the ASGI path in front of a stub of vLLM's app,
timed as this thread's CPU time (robust to other processes on a shared machine), minus the stub alone.

Also what it must not do: parse the body twice, or re-encode a body whose steering is already ids.
``python tests/fastpath/test_middleware_cost.py`` prints the figures (``docs/benchmarks.md``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

from emolab.bench.load import make_prompt

KEY = "k" * 32
CASES = {  # label -> steering (None: no steering field)
    "unsteered": None,
    "ids (as SteeringClient sends)": [3, 0.42, 1, -0.7],
    "names (rewritten to ids)": ["fear", 0.42, "joy", -0.7],
}


def bench_body(steering, ignore_eos: bool = True) -> bytes:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": make_prompt(random.Random(0), 150)}],
            "max_tokens": 256, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if ignore_eos:
        body["ignore_eos"] = True
    if steering is not None:
        body["vllm_xargs"] = {"steering": steering}
    return json.dumps(body).encode()


def make_middleware(monkeypatch, bundle, seen: list):
    from emolab.fastpath.middleware import SteeringMiddleware

    for name, value in (("EMOLAB_VECTORS", str(bundle)), ("EMOLAB_SERVED_MODEL_NAMES", "smollm2"),
                        ("EMOLAB_API_KEY", KEY)):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("EMOLAB_METRICS_DIR", raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)

    async def vllm_stub(scope, receive, send):
        message = await receive()
        seen.append((scope, message["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return SteeringMiddleware(vllm_stub), vllm_stub


def scope_for(raw: bytes) -> dict:
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(raw)).encode()), (b"authorization", b"Bearer " + KEY.encode()),
                        (b"user-agent", b"AsyncOpenAI/Python"), (b"accept", b"application/json")], "app": None}


async def cpu_per_call(app, raw: bytes, calls: int) -> float:
    """This thread's CPU seconds per request through ``app``."""
    async def receive():
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message):
        pass

    scope = scope_for(raw)
    start = time.thread_time()
    for _ in range(calls):
        await app(scope, receive, send)
    return (time.thread_time() - start) / calls


async def own_cost(middleware, stub, raw: bytes, calls: int = 500, rounds: int = 9) -> float:
    """Microseconds of the middleware's own work per request (best round, stub subtracted)."""
    through = alone = float("inf")
    for _ in range(rounds):
        through = min(through, await cpu_per_call(middleware, raw, calls))
        alone = min(alone, await cpu_per_call(stub, raw, calls))
    return (through - alone) * 1e6


def test_the_body_is_parsed_once_and_an_ids_body_passes_byte_for_byte(monkeypatch, smollm2_bundle_path):
    seen: list = []
    middleware, _ = make_middleware(monkeypatch, smollm2_bundle_path, seen)
    counts = {"loads": 0, "dumps": 0}
    loads, dumps = json.loads, json.dumps
    monkeypatch.setattr(json, "loads", lambda *a, **k: (counts.__setitem__("loads", counts["loads"] + 1), loads(*a, **k))[1])
    monkeypatch.setattr(json, "dumps", lambda *a, **k: (counts.__setitem__("dumps", counts["dumps"] + 1), dumps(*a, **k))[1])
    for label, steering in CASES.items():
        raw = bench_body(steering)
        counts.update(loads=0, dumps=0)
        asyncio.run(asyncio.wait_for(cpu_per_call(middleware, raw, 1), 30))
        scope, passed = seen[-1]
        assert counts["loads"] == 1, label  # parsed once (vLLM parses what it is handed, once more)
        if label.startswith("names"):
            assert counts["dumps"] == 1 and loads(passed)["vllm_xargs"]["steering"] == [4.0, 0.42, 1.0, -0.7]
            assert dict(scope["headers"])[b"content-length"] == str(len(passed)).encode()
        else:  # nothing to rewrite: the very bytes, the very scope
            assert counts["dumps"] == 0 and passed is raw and scope["headers"] == scope_for(raw)["headers"], label
    assert middleware.counters.values[4] == 2  # two of the three were steered


@pytest.mark.parametrize("label", list(CASES))
def test_the_middlewares_own_work_is_a_small_constant(monkeypatch, smollm2_bundle_path, label):
    middleware, stub = make_middleware(monkeypatch, smollm2_bundle_path, [])
    micros = asyncio.run(own_cost(middleware, stub, bench_body(CASES[label]), calls=200, rounds=5))
    print(f"middleware's own CPU per request, {label}: {micros:.1f} us")
    assert micros < 1000  # measured ~20-50 us on the CI machine; a ms would be a regression, not noise


if __name__ == "__main__":  # the figures for docs/benchmarks.md
    from pathlib import Path

    class _Env:
        def setenv(self, name, value):
            import os

            os.environ[name] = value

        def delenv(self, name, raising=True):
            import os

            os.environ.pop(name, None)

    bundle = Path(__file__).resolve().parents[2] / "vectors" / "smollm2"
    middleware, stub = make_middleware(_Env(), bundle, [])
    for label, steering in CASES.items():
        for ignore_eos in (True, False):
            raw = bench_body(steering, ignore_eos)
            micros = asyncio.run(own_cost(middleware, stub, raw, calls=1000, rounds=21))
            print(f"{label:32s} ignore_eos={ignore_eos!s:5s} body {len(raw):5d} B: {micros:6.1f} us")
