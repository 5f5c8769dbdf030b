"""Security of the HF backend, probed as an attacker would: the real app in-process, and a real server.

* Deny by default: every route of the app's real route table needs the key, but the health paths.
* Never a 5xx for a client's mistake: >= 1,000 generated malformed bodies get a 4xx with a message,
  in-process; a sample of them against a real server process; the server keeps serving.
* Fields the backend cannot honour, and misspellings of emolab's own, are refused with a hint.
* A non-streaming request whose client disconnects stops generating (the next one is served promptly).
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from conftest import running_server
from hypothesis import HealthCheck, given, settings
from malformed import EMOTIONS, malformed_requests
from starlette.routing import Route
from starlette.testclient import TestClient

from emolab.core.bundle import EmotionBundle
from emolab.serve.hf_app import create_app
from emolab.serve.hf_backend import HFBackend

KEY = "sec-key-3f9a"
MODEL = "tiny"
MESSAGES = [{"role": "user", "content": "hi"}]
AUTH = {"Authorization": f"Bearer {KEY}"}


def tiny_bundle(hidden: int = 128, num_layers: int = 4) -> EmotionBundle:
    rng = np.random.default_rng(0)
    vectors = {e: rng.normal(size=(2, hidden)).astype(np.float32) for e in EMOTIONS}
    return EmotionBundle(emotions=list(EMOTIONS), chosen_layers=[1, 2], vectors=vectors,
                         metadata={"model": MODEL, "num_layers": num_layers})


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return tiny_bundle().save(tmp_path_factory.mktemp("tiny-bundle"))


@pytest.fixture(scope="module")
def backend(tiny_llama_path):
    return HFBackend.load(str(tiny_llama_path), tiny_bundle(), dtype="float32", device="cpu", max_model_len=256)


@pytest.fixture(scope="module")
def app(backend):
    return create_app(backend, tiny_bundle(), served_model_names=[MODEL], api_key=KEY)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, raise_server_exceptions=False)


def route_table(app) -> list[tuple[str, str]]:
    """(method, path) of every route the real app mounts, path parameters filled in."""
    inner = app.app  # BearerAuthMiddleware -> FastAPI
    pairs = []
    for route in inner.routes:
        if isinstance(route, Route):
            path = route.path.replace("{", "").replace("}", "")
            pairs += [(method, path) for method in sorted(route.methods or {"GET"})]
    return pairs


def test_every_route_of_the_real_app_is_behind_the_key(app, client):
    routes = route_table(app)
    assert ("POST", "/v1/chat/completions") in routes and ("GET", "/health") in routes
    for method, path in routes + [("GET", "/no-such-route"), ("POST", "/invocations"), ("GET", "/docs")]:
        without = client.request(method, path, json={})
        if path in ("/health", "/healthz"):
            assert without.status_code == 200, (method, path)
            continue
        assert without.status_code == 401, (method, path, without.status_code)
        assert without.json()["error"]["code"] == "invalid_api_key"
        assert client.request(method, path, json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
        with_key = client.request(method, path, json={}, headers=AUTH)
        assert with_key.status_code != 401 and with_key.status_code < 500, (method, path, with_key.text)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(request=malformed_requests(MODEL, vocab=49152))
def test_a_thousand_malformed_bodies_get_a_4xx_with_a_message(client, request):
    path, raw = request
    response = client.post(path, content=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, (raw[:300], response.status_code, response.text[:300])
    error = response.json()["error"]
    assert error["message"] and set(error) == {"message", "type", "param", "code"}


def test_after_the_fuzzing_a_normal_request_still_works(client):
    reply = client.post("/v1/chat/completions", headers=AUTH,
                        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "temperature": 0,
                              "vllm_xargs": {"steering": ["fear", 1.0]}})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(("extra", "param", "words"), [
    ({"structured_outputs": {"json": {"type": "object"}}}, "structured_outputs", "not supported by the HF backend"),
    ({"prompt_embeds": "AAAA"}, "prompt_embeds", "not supported"),
    ({"response_format": {"type": "json_object"}}, "response_format", "not supported"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "less than or equal"),
    ({"n": 65}, "n", "more completions than this server holds"),
    ({"Steering": ["fear", 1.0]}, "Steering", "did you mean 'steering'"),
    ({"steer": ["fear", 1.0]}, "steer", "did you mean 'steering'"),
    ({"vllm_xarg": {"steering": ["fear", 1.0]}}, "vllm_xarg", "did you mean 'vllm_xargs'"),
    ({"extra_body": {"vllm_xargs": {"steering": ["fear", 1.0]}}}, "extra_body", "openai Python client"),
    ({"vllm_xargs": {"steer": ["fear", 1.0]}}, "vllm_xargs.steer", "steering goes in vllm_xargs.steering"),
    ({"vllm_xargs": {"other": 1}}, "vllm_xargs.other", "not a field this server reads"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role", "Input should be"),
    ({"messages": [{"role": "user", "content": "hi", "tool_calls": []}]}, "messages.0.tool_calls", "not supported"),
    ({"seed": 2**64}, "seed", "less than or equal"),
    ({"vllm_xargs": {"steering": ["--1", 1.0]}}, "vllm_xargs.steering", "unknown emotion"),
    ({"vllm_xargs": {"steering": ["²", 1.0]}}, "vllm_xargs.steering", "unknown emotion"),
])
def test_unsupported_and_misspelled_fields_are_refused_with_a_hint(client, extra, param, words):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2, **extra}
    reply = client.post("/v1/chat/completions", headers=AUTH, json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_default_valued_openai_fields_are_accepted(client):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2, "n": 1, "logprobs": False,
            "presence_penalty": 0, "frequency_penalty": 0.0, "user": "agent-7", "cache_salt": "mine"}
    assert client.post("/v1/chat/completions", headers=AUTH, json=body).status_code == 200


def test_a_server_fault_is_a_500_that_does_not_echo_the_exception(backend, client, monkeypatch):
    def fault() -> tuple[float, float]:  # injected fault: the response must not reveal its text
        raise RuntimeError("/secret/path/on/the/server")

    monkeypatch.setattr(backend, "sampling_defaults", fault)
    reply = client.post("/v1/chat/completions", headers=AUTH, json={"model": MODEL, "messages": MESSAGES})
    assert reply.status_code == 500
    message = reply.json()["error"]["message"]
    assert "incident" in message and "secret" not in message and "RuntimeError" not in message


@pytest.mark.slow
def test_real_server_refuses_a_sample_and_cancels_abandoned_requests(tiny_llama_path, bundle_path):
    with running_server(vectors=bundle_path, model=str(tiny_llama_path), api_key=KEY,
                        extra_args=["--served-model-name", MODEL, "--max-model-len", "4096", "--dtype", "float32",
                                    "--log-level", "warning"]) as url:
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as http:
            sample = malformed_requests(MODEL, vocab=49152)

            @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
            @given(request=sample)
            def probe(request):
                path, raw = request
                response = http.post(path, content=raw, headers={"Content-Type": "application/json"})
                assert 400 <= response.status_code < 500, (raw[:300], response.status_code, response.text[:300])
                assert response.json()["error"]["message"]

            probe()
            # A long non-streaming generation whose client leaves after half a second ...
            body = {"model": MODEL, "prompt": "x", "max_tokens": 4000, "temperature": 0}
            with pytest.raises(httpx.ReadTimeout):
                http.post("/v1/completions", json=body, timeout=0.5)
            left = time.perf_counter()
            # ... must not hold up the next request (it would wait for the rest of that generation otherwise).
            reply = http.post("/v1/completions", json={**body, "max_tokens": 2}, timeout=600)
            waited = time.perf_counter() - left
            assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 2
            full = time.perf_counter()
            http.post("/v1/completions", json={**body, "max_tokens": 60}, timeout=600)
            per_token = (time.perf_counter() - full) / 60
            # What the abandoned generation still had to do when its client left (a lower bound: later
            # tokens attend to a longer context); without cancelling, the next request waits all of it.
            remaining = 4000 * per_token - 0.5
            assert remaining > 2.0, f"the model is too fast for this check to tell ({per_token * 1e3:.2f} ms/token)"
            assert waited < 0.25 * remaining, (waited, remaining)
