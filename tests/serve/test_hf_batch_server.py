"""``emolab serve --backend hf`` with continuous batching, as real processes over HTTP (SmolLM2, fp32).

A batched server (``--hf-max-batch 3``: three rows at most, so of six concurrent requests three wait in the
queue and join as rows leave) answers concurrent requests (chat and completions, streamed and not, each with
its own steering) exactly as a ``--hf-max-batch 1`` server (``model.generate``, one at a time) answers them
one by one; past ``--max-concurrent-queue`` requests get 429 and the server goes on serving. A request for
``n`` choices gets, as choice i, what a request alone with seed + i gets, streamed or not, on both servers.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
from conftest import running_server

pytestmark = pytest.mark.slow
KEY = "batch-key"
QUEUE = 6


@pytest.fixture(scope="module")
def servers(smollm2_path, smollm2_bundle_path):
    common = ["--dtype", "float32", "--served-model-name", "smollm2", "--log-level", "warning"]
    with running_server(vectors=smollm2_bundle_path, model=str(smollm2_path), api_key=KEY,
                        extra_args=[*common, "--hf-max-batch", "1"]) as serial, \
            running_server(vectors=smollm2_bundle_path, model=str(smollm2_path), api_key=KEY,
                           extra_args=[*common, "--hf-max-batch", "3", "--hf-max-batch-tokens", "2048",
                                       "--max-concurrent-queue", str(QUEUE)]) as batched:
        yield serial, batched


REQUESTS = [
    ("chat", "Tell me about your weekend.", ["fear", 1.5], False, 16),
    ("chat", "What do you think of rainy days?", None, True, 12),
    ("completion", "My favourite place in the city is", ["joy", 1.0, "anger", -0.5], True, 14),
    ("chat", "Say hi.", None, False, 30),
    ("completion", "The old lighthouse keeper", ["sadness", 2.0], False, 10),
    ("chat", "Describe a busy market.", ["surprise", 1.0], True, 20),
]


async def ask(client: openai.AsyncOpenAI, kind: str, text: str, steering, stream: bool, max_tokens: int):
    """(text, finish reason, prompt tokens, completion tokens) of one request."""
    extra = {"vllm_xargs": {"steering": steering}} if steering else {}
    args = dict(model="smollm2", max_tokens=max_tokens, temperature=0, extra_body=extra)
    create = client.chat.completions.create if kind == "chat" else client.completions.create
    args.update({"messages": [{"role": "user", "content": text}]} if kind == "chat" else {"prompt": text})
    if not stream:
        reply = await create(**args)
        choice = reply.choices[0]
        return (choice.message.content if kind == "chat" else choice.text, choice.finish_reason,
                reply.usage.prompt_tokens, reply.usage.completion_tokens)
    parts, finish, usage = [], None, None
    async for chunk in await create(stream=True, stream_options={"include_usage": True}, **args):
        if chunk.choices:
            choice = chunk.choices[0]
            parts.append((choice.delta.content if kind == "chat" else choice.text) or "")
            finish = choice.finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    return "".join(parts), finish, usage.prompt_tokens, usage.completion_tokens


def test_concurrent_requests_on_the_batched_server_equal_the_serial_servers_one_by_one(servers):
    serial_url, batched_url = servers

    async def run():
        serial = openai.AsyncOpenAI(base_url=serial_url + "/v1", api_key=KEY, max_retries=0, timeout=600)
        batched = openai.AsyncOpenAI(base_url=batched_url + "/v1", api_key=KEY, max_retries=0, timeout=600)
        want = [await ask(serial, *r) for r in REQUESTS]
        got = await asyncio.gather(*(ask(batched, *r) for r in REQUESTS))
        await serial.close()
        await batched.close()
        return want, got

    want, got = asyncio.run(run())
    assert got == want
    assert want[3][1] == "stop" and want[3][3] < 30 and want[0][1] == "length"  # EOS and length both occur


def test_past_the_queue_limit_requests_get_429_and_the_server_serves_on(servers):
    _, batched_url = servers
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 400,
            "temperature": 0, "stream": True, "ignore_eos": True}
    opened, release = threading.Barrier(QUEUE + 1), threading.Event()

    def hold():  # a streamed request that stays open until released: it counts against the queue
        with httpx.Client(base_url=batched_url, headers=headers, timeout=600) as http, \
                http.stream("POST", "/v1/chat/completions", json=body) as reply:
            assert reply.status_code == 200
            lines = reply.iter_lines()  # kept: a dropped iterator closes the stream (and the server cancels it)
            assert next(lines).startswith("data: ")  # the first chunk (the role) comes at once, running or queued
            opened.wait()
            release.wait()

    threads = [threading.Thread(target=hold) for _ in range(QUEUE)]
    for thread in threads:
        thread.start()
    try:
        opened.wait(timeout=600)
        time.sleep(0.5)  # a request is admitted just after its first chunk is sent
        busy = httpx.post(batched_url + "/v1/completions", headers=headers, timeout=60,
                          json={"model": "smollm2", "prompt": "hi", "max_tokens": 2})
        assert busy.status_code == 429, busy.text
        assert busy.json()["error"]["code"] == "queue_full"
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=600)
    deadline = time.monotonic() + 120
    while True:  # the held requests end as the server sees their clients gone (at its next step)
        reply = httpx.post(batched_url + "/v1/completions", headers=headers, timeout=600,
                           json={"model": "smollm2", "prompt": "hi", "max_tokens": 2, "temperature": 0})
        if reply.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 2


CHOICE_BODY = {"model": "smollm2", "prompt": "The letter said that", "max_tokens": 12, "temperature": 0.9, "seed": 11,
               "vllm_xargs": {"steering": ["joy", 1.0]}}


def test_n_choices_are_the_seeded_requests_alone_streamed_or_not_batched_or_serial(servers):
    headers = {"Authorization": f"Bearer {KEY}"}

    def post(url: str, **changes):
        reply = httpx.post(url + "/v1/completions", headers=headers, timeout=600, json={**CHOICE_BODY, **changes})
        assert reply.status_code == 200, reply.text
        return reply.json()

    def streamed(url: str, **changes) -> tuple[list[str], list[str | None], dict]:
        texts, finishes, usage = ["", "", ""], [None, None, None], None
        body = {**CHOICE_BODY, **changes, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.Client(base_url=url, headers=headers, timeout=600) as http, \
                http.stream("POST", "/v1/completions", json=body) as reply:
            assert reply.status_code == 200
            events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
        for event in events:
            for choice in event["choices"]:
                texts[choice["index"]] += choice["text"]
                finishes[choice["index"]] = choice["finish_reason"] or finishes[choice["index"]]
            usage = event.get("usage") or usage
        assert events[-1]["usage"] == usage  # the usage chunk comes last, after every choice has finished
        return texts, finishes, usage

    serial_url, batched_url = servers
    alone = [post(serial_url, seed=11 + i) for i in range(3)]
    want = [reply["choices"][0]["text"] for reply in alone]
    assert len(set(want)) == 3  # three seeds, three samples: the choices are not copies of one
    for url in (serial_url, batched_url):
        reply = post(url, n=3)
        assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
        assert [c["text"] for c in reply["choices"]] == want
        assert [c["finish_reason"] for c in reply["choices"]] == [r["choices"][0]["finish_reason"] for r in alone]
        assert reply["usage"]["prompt_tokens"] == alone[0]["usage"]["prompt_tokens"]  # the prompt counted once
        assert reply["usage"]["completion_tokens"] == sum(r["usage"]["completion_tokens"] for r in alone)
        texts, finishes, usage = streamed(url, n=3)
        assert texts == want and usage == reply["usage"]
        assert finishes == [c["finish_reason"] for c in reply["choices"]]


def test_n_beyond_what_the_server_holds_is_a_400_before_any_stream(servers):
    _, batched_url = servers
    headers = {"Authorization": f"Bearer {KEY}"}
    for changes in ({"n": QUEUE + 1}, {"n": QUEUE + 1, "stream": True}):
        reply = httpx.post(batched_url + "/v1/completions", headers=headers, timeout=60, json={**CHOICE_BODY, **changes})
        assert reply.status_code == 400, (changes, reply.text)
        assert reply.json()["error"]["param"] == "n"
        assert "--max-concurrent-queue 6" in reply.json()["error"]["message"]
