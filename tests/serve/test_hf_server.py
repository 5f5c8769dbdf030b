"""The HF-backend server as a real process on a loopback port, driven by the openai client over HTTP."""

from __future__ import annotations

import json

import httpx
import numpy as np
import openai
import pytest
from conftest import hooked_greedy, running_server

from emolab.core.bundle import EmotionBundle
from emolab.core.models import load_model

pytestmark = pytest.mark.slow

KEY = "test-key-7c1e"
N_TOKENS = 8
MESSAGES = [{"role": "user", "content": "Tell me about your weekend."}]
PROMPT = "My favourite place in the city is"


@pytest.fixture(scope="module")
def base_url(smollm2_path, smollm2_bundle_path):
    with running_server(vectors=smollm2_bundle_path, model="smollm2", api_key=KEY,
                        extra_args=["--max-alpha", "20", "--max-pairs", "8", "--log-level", "warning",
                                    "--alpha-scale", "raw"]) as url:  # raw: the hand-made sums below are exact
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def reference(smollm2_path):
    return load_model("smollm2", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def bundle(smollm2_bundle_path):
    return EmotionBundle.load(smollm2_bundle_path)


def chat_ids(tokenizer, messages=MESSAGES, *, begun: bool = False) -> list[int]:
    """The prompt's ids, by hand; ``begun``: the last (assistant) message is left open for the model to continue."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not begun,
                                         continue_final_message=begun)
    return tokenizer(text, add_special_tokens=False).input_ids


def greedy(reference, ids: list[int], deltas: dict[int, np.ndarray] | None = None) -> tuple[str, list[int]]:
    """Plain ``model.generate`` greedy, optionally with hand-made hooks adding ``deltas[layer]`` to block outputs."""
    return hooked_greedy(*reference, ids, N_TOKENS, deltas)


def chat(client, steering=None, stream=False, max_tokens=N_TOKENS, **kwargs):
    """Text, finish reason and usage of one chat request (streamed chunks joined)."""
    extra = {"vllm_xargs": {"steering": steering}} if steering is not None else {}
    extra.update(kwargs.pop("extra_body", {}))
    kwargs.setdefault("messages", MESSAGES)
    args = dict(model="smollm2", max_tokens=max_tokens, temperature=0, extra_body=extra, **kwargs)
    if not stream:
        reply = client.chat.completions.create(**args)
        return reply.choices[0].message.content, reply.choices[0].finish_reason, reply.usage
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[-1].choices == [] and len(finish) == 1
    return text, finish[0], chunks[-1].usage


def test_health_is_open_and_models_lists_the_served_name(base_url, client):
    for path in ("/health", "/healthz"):
        response = httpx.get(base_url + path)
        assert response.status_code == 200 and response.json()["status"] == "ok"
    assert [m.id for m in client.models.list().data] == ["smollm2"]


def test_emotions_route(base_url, bundle):
    info = httpx.get(base_url + "/v1/emotions", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert info["emotions"] == bundle.emotions
    assert info["id_map"] == {e: i for i, e in enumerate(bundle.steering_names)}
    assert bundle.steering_names[len(bundle.emotions):] == ["valence", "arousal"]
    assert info["chosen_layers"] == bundle.chosen_layers
    assert (info["model"], info["hidden"], info["num_layers"], info["backend"]) == ("smollm2", 576, 30, "hf")
    assert info["limits"] == {"max_alpha": 20.0, "max_pairs": 8}


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/models"), ("GET", "/v1/emotions"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
    ("GET", "/v1/no-such-route"),
])
def test_every_v1_route_needs_the_key(base_url, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY}):
        response = httpx.request(method, base_url + path, headers=headers, json={})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    right = httpx.request(method, base_url + path, headers={"Authorization": f"Bearer {KEY}"}, json={})
    assert right.status_code != 401  # POSTs with {} then fail validation (400), the unknown route 404s


def test_openai_client_with_a_wrong_key_is_refused(base_url):
    bad = openai.OpenAI(base_url=base_url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=1)


@pytest.mark.parametrize("stream", [False, True])
def test_unsteered_chat_equals_plain_generate(client, reference, stream):
    ids = chat_ids(reference[1])
    want_text, want_ids = greedy(reference, ids)
    # SmolLM2's template ignores enable_thinking (Qwen3's honours it): accepted, and the output stays plain.
    text, finish, usage = chat(client, stream=stream, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert text == want_text
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(ids), len(want_ids))
    assert finish == ("stop" if want_ids[-1] == reference[1].eos_token_id else "length")


@pytest.mark.parametrize("stream", [False, True])
def test_a_prefilled_reply_is_continued_as_vllm_continues_it(client, reference, stream):
    # continue_final_message: the template leaves the assistant's begun message open, and the model goes on from it.
    tokenizer = reference[1]
    begun = [*MESSAGES, {"role": "assistant", "content": "My weekend was"}]
    ids = chat_ids(tokenizer, begun, begun=True)
    assert tokenizer.decode(ids).endswith("My weekend was") and ids[:len(chat_ids(tokenizer)) - 1] == chat_ids(tokenizer)[:-1]
    want_text, want_ids = greedy(reference, ids)
    got, finish, usage = chat(client, stream=stream, messages=begun,
                              extra_body={"continue_final_message": True, "add_generation_prompt": False})
    assert got == want_text and not got.startswith("My weekend")
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(ids), len(want_ids))


@pytest.mark.parametrize("stream", [False, True])
def test_unsteered_completion_equals_plain_generate(client, reference, stream):
    ids = reference[1](PROMPT).input_ids
    want_text, want_ids = greedy(reference, ids)
    args = dict(model="smollm2", prompt=PROMPT, max_tokens=N_TOKENS, temperature=0)
    if stream:
        chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **args))
        text, usage = "".join(c.choices[0].text for c in chunks if c.choices), chunks[-1].usage
    else:
        reply = client.completions.create(**args)
        text, usage = reply.choices[0].text, reply.usage
    assert text == want_text
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(ids), len(want_ids))


def test_mixed_steering_equals_the_hand_made_sum(client, reference, bundle):
    ids = chat_ids(reference[1])
    fear, joy = bundle.id_map["fear"], bundle.id_map["joy"]
    # Powers of two keep x*v exact, so the server's sum and this one round identically.
    deltas = {layer: 4.0 * bundle.vector("fear", layer) - 2.0 * bundle.vector("joy", layer)
              for layer in bundle.chosen_layers}
    want_text, want_ids = greedy(reference, ids, deltas)
    baseline, _ = greedy(reference, ids)
    assert want_text != baseline  # the steering is strong enough to matter
    for stream in (False, True):
        text, _, usage = chat(client, [fear, 4.0, joy, -2.0], stream=stream)
        assert text == want_text
        assert usage.completion_tokens == len(want_ids)
    # The same steering spelt with names, repeated ids, and the top-level field (first 3 tokens: same greedy path).
    prefix = reference[1].decode(want_ids[:3], skip_special_tokens=True)
    assert chat(client, ["fear", 4, "JOY", -2.0], max_tokens=3)[0] == prefix
    assert chat(client, [fear, 2.0, joy, -2.0, fear, 2.0], max_tokens=3)[0] == prefix
    assert chat(client, extra_body={"steering": [fear, 4.0, joy, -2.0]}, max_tokens=3)[0] == prefix


def test_a_large_alpha_changes_the_output(client, reference):
    baseline = chat(client, max_tokens=4)[0]
    assert chat(client, ["sadness", 12.0], max_tokens=4)[0] != baseline
    assert chat(client, [], max_tokens=4)[0] == baseline  # an empty list is the plain model


def test_seeded_sampling_repeats(client):
    args = dict(model="smollm2", messages=MESSAGES, max_tokens=4, temperature=1.0, seed=1234)
    first, second = (client.chat.completions.create(**args).choices[0].message.content for _ in range(2))
    assert first == second


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_the_text(client, reference, stream):
    full, _ = greedy(reference, chat_ids(reference[1]))
    word = full.split()[2]
    text, finish, _ = chat(client, stop=[word], stream=stream)
    assert text == full[: full.index(word)]
    assert finish == "stop"


def test_health_answers_during_a_generation_and_an_abandoned_stream_frees_the_worker(base_url, client):
    stream = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=200, temperature=0,
                                            stream=True)
    next(iter(stream))  # the generation has started
    assert httpx.get(base_url + "/health", timeout=30).status_code == 200
    stream.close()  # client goes away; the server cancels the generation at its next step
    text, _, usage = chat(client, max_tokens=2)
    assert usage.completion_tokens == 2 and text


def malformed_corpus(vocab: int) -> list[tuple[str, bytes]]:
    """(path, raw body) pairs that must each get a 4xx with a message."""
    good = {"model": "smollm2", "messages": MESSAGES, "max_tokens": 2}

    def chat_with(**changes):
        body = {**good, **changes}
        return "/v1/chat/completions", json.dumps({k: v for k, v in body.items() if v is not DROP}).encode()

    def completion_with(**changes):
        body = {"model": "smollm2", "prompt": PROMPT, "max_tokens": 2, **changes}
        return "/v1/completions", json.dumps({k: v for k, v in body.items() if v is not DROP}).encode()

    steer = lambda value: chat_with(vllm_xargs={"steering": value})  # noqa: E731
    return [
        ("/v1/chat/completions", b""), ("/v1/chat/completions", b"{bad json"), ("/v1/chat/completions", b"[1, 2]"),
        ("/v1/chat/completions", b'"text"'), ("/v1/chat/completions", b"\xff\xfe\x00"),
        ("/v1/chat/completions", b"[" * 50_000),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "vllm_xargs": {"steering": [0, NaN]}}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "steering": [0, Infinity]}'),
        steer([0]), steer([0, 1.0, 2]), steer([99, 1.0]), steer([-1, 1.0]), steer(["rage", 1.0]), steer([1.5, 1.0]),
        steer([True, 1.0]), steer([0, "abc"]), steer([0, None]), steer([0, "inf"]), steer([0, 1e9]), steer([0, -25]),
        steer([0, 1.0] * 9), steer("fear"), steer({"fear": 1.0}), steer([[0], 1.0]),
        chat_with(vllm_xargs=[0, 1.0]), chat_with(vllm_xargs={"steering": [0, 1]}, steering=[0, 1]),
        chat_with(model="gpt-4"), chat_with(model=7), chat_with(messages=DROP), chat_with(messages=[]),
        chat_with(messages="hi"), chat_with(messages=[{"role": "robot", "content": "hi"}]),
        chat_with(messages=[{"role": "user", "content": 5}]), chat_with(messages=[{"content": "hi"}]),
        chat_with(max_tokens="ten"), chat_with(max_tokens=0), chat_with(max_tokens=-3), chat_with(max_tokens=2.5),
        chat_with(max_tokens=10**9), chat_with(temperature=-1), chat_with(temperature="hot"), chat_with(top_p=0),
        chat_with(top_p=1.5), chat_with(stream="yes"), chat_with(seed="x"), chat_with(stop=5), chat_with(stop=[""]),
        chat_with(n=0), chat_with(n=129), chat_with(chat_template_kwargs="x"), chat_with(chat_template_kwargs={"tokenize": True}),
        chat_with(stream_options={"include_usage": True}), chat_with(tools=[{"type": "function"}]),
        chat_with(top_logprobs=3), chat_with(logprobs="yes"),
        chat_with(continue_final_message=True), chat_with(continue_final_message="yes"),
        chat_with(continue_final_message=True, add_generation_prompt=False),  # the last message is the user's
        chat_with(messages=[*MESSAGES, {"role": "assistant", "content": ""}], continue_final_message=True,
                  add_generation_prompt=False), chat_with(add_generation_prompt=1),
        completion_with(prompt=DROP), completion_with(prompt=5), completion_with(prompt=[[1, 2]]),
        completion_with(prompt=[vocab + 5]), completion_with(prompt=[]), completion_with(prompt=["a", "b"]),
        completion_with(echo=True), completion_with(vllm_xargs={"steering": ["fear"]}),
    ]


DROP = object()


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(base_url, client, reference):
    corpus = malformed_corpus(len(reference[1]))
    assert len(corpus) >= 30
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as http:
        for path, raw in corpus:
            response = http.post(path, content=raw)
            assert 400 <= response.status_code < 500, (raw[:200], response.status_code, response.text[:300])
            error = response.json()["error"]
            assert error["message"] and error["type"], raw[:200]
            assert set(error) == {"message", "type", "param", "code"}
    text, finish, usage = chat(client, max_tokens=2)
    assert text and usage.completion_tokens == 2 and finish == "length"
