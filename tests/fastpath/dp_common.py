"""What the data-parallel tests send and read: one set of greedy completions (steered and not) and the
per-worker steering counters on ``/metrics``. Shared by test_data_parallel.py (DP=2 on one host) and
test_multi_node_dp.py (a head and a headless node)."""

from __future__ import annotations

import asyncio
import re

import httpx
from conftest import VLLM_KEY

__all__ = ["HEADERS", "answer_all", "assert_readouts_agree", "read_all", "request_bodies", "steered_count",
           "vllm_engine_requests", "worker_steered"]

PROMPTS = ["My neighbour knocked on the door and", "The weather report for tomorrow says",
           "Write one sentence about the train station:", "In the morning the village market"]
STEERINGS = [None, ["fear", 1.0], ["joy", 0.5, "anger", 0.5], ["sadness", 0.8], ["disgust", 1.0], None]
HEADERS = {"Authorization": f"Bearer {VLLM_KEY}"}


def request_bodies() -> list[dict]:
    """12 greedy completions: 8 steered (single emotions and a blend), 4 unsteered, prompts repeated."""
    out = []
    for i, prompt in enumerate(PROMPTS * 3):
        body = {"model": "smollm2", "prompt": prompt, "max_tokens": 12, "temperature": 0}
        steering = STEERINGS[i % len(STEERINGS)]
        if steering:
            body["vllm_xargs"] = {"steering": steering}
        out.append(body)
    return out


def steered_count(bodies: list[dict]) -> int:
    return sum(1 for body in bodies if "vllm_xargs" in body)


async def _answer_all(base_url: str, bodies: list[dict], headers: dict[str, str]) -> list[str]:
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=600) as client:
        replies = await asyncio.gather(*(client.post("/v1/completions", json=body) for body in bodies))
    for reply in replies:
        assert reply.status_code == 200, reply.text
    return [reply.json()["choices"][0]["text"] for reply in replies]


def answer_all(base_url: str, bodies: list[dict], rank: int | None = None) -> list[str]:
    """Every body sent at once; ``rank`` pins them all to one engine replica (vLLM's ``X-data-parallel-rank``)."""
    headers = dict(HEADERS) if rank is None else {**HEADERS, "X-data-parallel-rank": str(rank)}
    return asyncio.run(_answer_all(base_url, bodies, headers))


async def _read_all(base_url: str, bodies: list[dict], headers: dict[str, str]) -> list[dict]:
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=600) as client:
        replies = await asyncio.gather(*(client.post("/v1/completions", json={**body, "readout": "per_token"})
                                         for body in bodies))
    for reply in replies:
        assert reply.status_code == 200, reply.text
    return [reply.json() for reply in replies]


def read_all(base_url: str, bodies: list[dict]) -> list[dict]:
    """Every body sent at once with ``"readout": "per_token"``: the whole response bodies."""
    return asyncio.run(_read_all(base_url, bodies, dict(HEADERS)))


def assert_readouts_agree(got: list[dict], expected: list[dict], tolerance: float = 1e-3) -> None:
    """Same text, and each emotion's prompt, generated and per-token scores within ``tolerance`` (the batch
    a request shares differs between servers, so float32 sums may differ in their last bits)."""
    for mine, theirs in zip(got, expected, strict=True):
        assert mine["choices"][0]["text"] == theirs["choices"][0]["text"]
        a, b = mine["emotion_readout"], theirs["emotion_readout"]
        assert a is not None and b is not None and a["emotions"] == b["emotions"]
        for part in ("prompt", "generated"):
            assert max(abs(a[part][e] - b[part][e]) for e in a["emotions"]) < tolerance, (part, a[part], b[part])
        assert a["tokens"] == b["tokens"] and a["tokens"]["generated"] == mine["usage"]["completion_tokens"] - 1
        assert len(a["generated_tokens"]) == len(b["generated_tokens"]) == a["tokens"]["generated"]
        for x, y in zip(a["generated_tokens"], b["generated_tokens"], strict=True):
            assert max(abs(p - q) for p, q in zip(x, y, strict=True)) < tolerance


def _metrics_text(base_url: str) -> str:
    return httpx.get(base_url + "/metrics", headers=HEADERS, timeout=60).text


def worker_steered(base_url: str) -> dict[int, float]:
    """``emolab_worker_steered_requests_total`` per worker pid, as this server's ``/metrics`` reports it."""
    return {int(pid): float(value) for pid, value in
            re.findall(r'^emolab_worker_steered_requests_total\{pid="(\d+)"\} (\S+)$', _metrics_text(base_url),
                       flags=re.M)}


def vllm_engine_requests(base_url: str) -> dict[str, float]:
    """Finished requests per engine replica from vLLM's own metrics (``vllm:request_success_total{engine=...}``)."""
    totals: dict[str, float] = {}
    for labels, value in re.findall(r"^vllm:request_success_total\{([^}]*)\} (\S+)$", _metrics_text(base_url),
                                    flags=re.M):
        engine = re.search(r'engine="(\d+)"', labels)
        if engine:
            totals[engine.group(1)] = totals.get(engine.group(1), 0.0) + float(value)
    return totals
