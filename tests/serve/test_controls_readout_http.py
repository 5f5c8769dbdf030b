"""Steering controls and the emotion readout over HTTP, the openai client and ``SteeringClient`` (SmolLM2, fp32).

On the HF backend (batched): a request with controls gets exactly the reply the in-process steerer writes; a
readout comes back in the body (streaming: in the last chunk) and leaves the reply unchanged; bad fields are
400s naming the field. The vLLM backend's half of the same checks is in ``tests/fastpath``.
"""

from __future__ import annotations

import httpx
import pytest
from conftest import running_server

from emolab.api_client import SteeringClient
from emolab.api_client.client import readout_of
from emolab.core.bundle import EmotionBundle
from emolab.core.models import chat_prompt_ids, load_model
from emolab.core.steering import Steering
from emolab.steer import HFSteerer, generate

pytestmark = pytest.mark.slow
KEY = "controls-key"
PROMPT = "Tell me about your weekend."


@pytest.fixture(scope="module")
def server(smollm2_path, smollm2_bundle_path):
    args = ["--dtype", "float32", "--served-model-name", "smollm2", "--log-level", "warning", "--hf-max-batch", "4"]
    with running_server(vectors=smollm2_bundle_path, model=str(smollm2_path), api_key=KEY, extra_args=args) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return SteeringClient(server, api_key=KEY)


@pytest.fixture(scope="module")
def in_process(smollm2_path, smollm2_bundle_path):
    model, tokenizer = load_model(str(smollm2_path), dtype="float32", device="cpu")
    bundle = EmotionBundle.load(smollm2_bundle_path)
    return model, tokenizer, HFSteerer(model, bundle, basis=bundle.steering_basis(None, derived=True))


CONTROLS = [
    ({"joy": 0.4}, None, "generated"),
    ({"fear": 0.5}, {"fear": "clamp"}, None),
    ({"sadness": 0.3}, {"sadness": "clamp", "joy": "ablate"}, "prompt"),
    (None, {"anger": "ablate"}, None),
    ({"valence": 0.5}, None, None),
]


@pytest.mark.parametrize("steering, modes, scope", CONTROLS)
def test_controls_over_http_equal_the_in_process_steerer(client, in_process, steering, modes, scope):
    model, tokenizer, steerer = in_process
    reply = client.chat(PROMPT, steering, modes=modes, scope=scope, max_tokens=14, temperature=0)
    value = client.steering_value(steering, client.steerable, modes, scope)
    ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": PROMPT}])
    expected = generate(model, tokenizer, [ids], steerer=steerer, steerings=[value], max_new_tokens=14)[0]
    assert reply == tokenizer.decode(expected, skip_special_tokens=True)
    assert reply != client.chat(PROMPT, max_tokens=14, temperature=0)  # every control here changes the reply


def test_readout_comes_back_and_changes_nothing(client):
    plain = client.chat_completion(PROMPT, {"joy": 0.4}, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2)
    read = client.chat_completion(PROMPT, {"joy": 0.4}, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2,
                                  readout="per_token")
    assert read.choices[0].message.content == plain.choices[0].message.content
    assert [t.logprob for t in read.choices[0].logprobs.content] == [t.logprob for t in plain.choices[0].logprobs.content]
    assert readout_of(plain) is None
    readout = readout_of(read)
    emotions = client.emotions
    assert readout["emotions"] == emotions and set(readout["prompt"]) == set(readout["generated"]) == set(emotions)
    assert readout["tokens"]["generated"] == read.usage.completion_tokens - 1  # the last token is never read
    assert readout["tokens"]["prompt"] == read.usage.prompt_tokens - 1  # the first (a sink) is left out
    assert len(readout["generated_tokens"]) == readout["tokens"]["generated"]
    assert readout["scale"] == "standardized" and "before this request's own steering" in readout["read_at"]
    means = client.chat(PROMPT, {"joy": 0.4}, max_tokens=12, temperature=0, readout=True)
    assert means.readout["generated"] == readout["generated"] and "generated_tokens" not in means.readout


def test_streamed_readout_is_in_the_last_chunk(client):
    chunks = list(client.chat_completion(PROMPT, None, max_tokens=8, temperature=0, stream=True, readout=True))
    found = [i for i, chunk in enumerate(chunks) if readout_of(chunk) is not None]
    assert found == [len(chunks) - 1]
    streamed = readout_of(chunks[-1])
    assert streamed == client.chat(PROMPT, max_tokens=8, temperature=0, readout=True).readout


@pytest.mark.parametrize("body, param", [
    ({"readout": "yes"}, "readout"),
    ({"readout": {"per_token": 1}}, "readout"),
    ({"vllm_xargs": {"readout": True}}, "vllm_xargs.readout"),
    ({"readout": True, "n": 0}, "n"),
    ({"steering_scope": "decode"}, "steering_scope"),
    ({"vllm_xargs": {"steering": ["fear", 0.5], "steering_modes": ["fear", "squash"]}}, "vllm_xargs.steering_modes"),
    ({"steering": ["joy", 0.5], "steering_modes": ["fear", "clamp"]}, "steering_modes"),
    ({"steering": ["joy", 0.5], "steering_modes": {"joy": "ablate"}}, "steering_modes"),
])
def test_bad_controls_and_readout_are_400s_naming_the_field(server, body, param):
    response = httpx.post(f"{server}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                          json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_emotions_route_describes_controls_and_readout(client):
    info = client.info
    assert info["controls"]["steering_scope"]["values"] == ["all", "prompt", "generated"]
    assert info["controls"]["steering_modes"]["values"] == ["add", "ablate", "clamp"]
    assert info["readout"]["response_field"] == "emotion_readout" and info["readout"]["scale"] == "standardized"
    assert info["steerable"][-2:] == ["valence", "arousal"] and info["id_map"]["arousal"] == 7
    assert "Mohammad" in info["derived"]["valence"]["source"]


def test_an_unsteered_request_reads_what_the_readout_library_reads(client, in_process, smollm2_bundle_path):
    """Unsteered, the served per-token readout is the library's readout of the prompt and reply (KV-cached vs a
    whole-text forward: within 1e-3)."""
    from emolab.steer.readout import EmotionReadout

    model, tokenizer, _ = in_process
    response = client.chat_completion(PROMPT, None, max_tokens=10, temperature=0, readout="per_token",
                                      extra_body={"ignore_eos": True})
    ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": PROMPT}])
    reply_ids = tokenizer(response.choices[0].message.content, add_special_tokens=False).input_ids
    library = EmotionReadout(model, tokenizer, EmotionBundle.load(smollm2_bundle_path)).ids(ids + reply_ids[:-1])
    served = readout_of(response)["generated_tokens"]
    assert len(served) == len(reply_ids) - 1
    for k, scores in enumerate(served):
        assert max(abs(a - b) for a, b in zip(scores, library.scores[len(ids) + k], strict=True)) < 1e-3
    assert Steering().salt(6) is None


BEGUN = [{"role": "user", "content": "How do you feel about the news?"}, {"role": "assistant", "content": "Honestly, I"}]


@pytest.mark.parametrize("scope", ["prompt", "generated"])
def test_a_begun_reply_is_prompt_to_the_scope_and_to_the_readout(client, in_process, scope):
    """A reply the client began (``continue_final_message``) is prompt: ``prompt`` scope steers its words and not the
    continuation, ``generated`` only the continuation; the readout counts the begun words among the prompt's."""
    model, tokenizer, steerer = in_process
    begun = {"continue_final_message": True, "add_generation_prompt": False}
    ids = chat_prompt_ids(tokenizer, BEGUN, **begun)
    value = client.steering_value({"sadness": 0.6}, client.steerable, None, scope)
    expected = generate(model, tokenizer, [ids], steerer=steerer, steerings=[value], max_new_tokens=12)[0]
    response = client.chat_completion(BEGUN, {"sadness": 0.6}, scope=scope, max_tokens=12, temperature=0,
                                      readout=True, extra_body=begun)
    assert response.choices[0].message.content == tokenizer.decode(expected, skip_special_tokens=True)
    plain = client.chat_completion(BEGUN, None, max_tokens=12, temperature=0, extra_body=begun)
    assert response.choices[0].message.content != plain.choices[0].message.content
    assert response.usage.prompt_tokens == len(ids)
    assert readout_of(response)["tokens"]["prompt"] == len(ids) - 1  # the begun words are read as prompt
