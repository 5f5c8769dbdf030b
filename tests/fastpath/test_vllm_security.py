"""Security of the vLLM backend, probed as an attacker would.

* The real vLLM app's route table, read at run time (a route a future vLLM adds is covered too):
  every route answers 401 without the key but the health paths, and only emolab's own routes are
  served; the rest (SageMaker ``/invocations``, Anthropic ``/v1/messages``, batch, scoring, admin)
  answer 404 instead of running "accepted and unsteered".
* Cache poisoning: an unsteered request carrying the salt an attacker can compute for ``fear 3.0``
  must not change what a later real ``fear 3.0`` request generates.
* >= 1,000 generated malformed bodies against the real server: always a 4xx with a message.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
from conftest import VLLM_KEY
from hypothesis import HealthCheck, given, settings
from malformed import malformed_requests

pytest.importorskip("vllm")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]

AUTH = {"Authorization": f"Bearer {VLLM_KEY}"}
OPEN = ("/health", "/healthz")

ROUTE_PROBE = r'''
import json, os, sys
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from vllm.entrypoints.launchers.app import build_app
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

args = make_arg_parser(FlexibleArgumentParser()).parse_args(
    ["--model", sys.argv[1], "--middleware", "emolab.fastpath.middleware.SteeringMiddleware"])
app = build_app(args, supported_tasks=("generate",))
client = TestClient(app, raise_server_exceptions=False)
rows = []
for route in app.routes:
    path = route.path.replace("{", "").replace("}", "") or "/"
    if isinstance(route, WebSocketRoute):
        rows.append({"path": path, "method": "WEBSOCKET"})
        continue
    methods = sorted(getattr(route, "methods", None) or {"GET"}) if not isinstance(route, Mount) else ["GET"]
    for method in methods:
        without = client.request(method, path, json={})
        wrong = client.request(method, path, json={}, headers={"Authorization": "Bearer wrong"})
        row = {"path": path, "method": method, "without": without.status_code, "wrong": wrong.status_code}
        if path not in ("/v1/chat/completions", "/v1/completions", "/health", "/healthz"):
            with_key = client.request(method, path, json={}, headers={"Authorization": "Bearer " + os.environ["EMOLAB_API_KEY"]})
            row["with_key"] = with_key.status_code
        rows.append(row)
print("ROUTES " + json.dumps(rows))
'''


def test_every_route_of_the_real_vllm_app_is_behind_the_key_and_only_emolab_routes_are_served(
        smollm2_path, smollm2_bundle_path):
    env = {**os.environ, "EMOLAB_VECTORS": str(smollm2_bundle_path), "EMOLAB_API_KEY": "route-key"}
    done = subprocess.run([sys.executable, "-c", ROUTE_PROBE, str(smollm2_path)], env=env, capture_output=True,
                          text=True, timeout=600)
    line = next((x for x in done.stdout.splitlines() if x.startswith("ROUTES ")), None)
    assert line, done.stderr[-3000:]
    import json

    from emolab.fastpath.middleware import SteeringMiddleware

    rows = json.loads(line[len("ROUTES "):])
    paths = {row["path"] for row in rows}
    # The table is vLLM's own: it holds the routes the probe found open before (and whatever vLLM adds).
    assert {"/invocations", "/v1/messages", "/v1/chat/completions/batch", "/tokenize", "/metrics"} <= paths
    websockets = [row for row in rows if row["method"] == "WEBSOCKET"]
    assert not websockets or all(row["path"] not in SteeringMiddleware.SERVED_PATHS for row in websockets)
    for row in rows:
        if row["method"] == "WEBSOCKET":
            continue
        if row["path"] in OPEN:
            continue
        assert row["without"] == 401 and row["wrong"] == 401, row
        if "with_key" in row and row["path"] not in SteeringMiddleware.SERVED_PATHS:
            assert row["with_key"] == 404, row  # not mounted for clients: never "accepted and unsteered"


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/invocations"), ("POST", "/generative_scoring"), ("POST", "/scale_elastic_ep"),
    ("POST", "/v1/messages"), ("POST", "/v1/chat/completions/batch"), ("GET", "/openapi.json"), ("GET", "/docs"),
    ("GET", "/redoc"), ("GET", "/load"), ("GET", "/kv_event_sources"), ("POST", "/inference/v1/generate"),
    ("POST", "/v1/responses"), ("GET", "/ping"), ("GET", "/no-such-route"),
])
def test_real_server_routes_outside_emolab_are_closed(vllm_server, method, path):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "steering": ["fear", 3.0]}
    assert httpx.request(method, vllm_server + path, json=body, timeout=60).status_code == 401
    with_key = httpx.request(method, vllm_server + path, json=body, headers=AUTH, timeout=60)
    assert with_key.status_code == 404, with_key.text
    assert "not served by emolab" in with_key.json()["error"]["message"]


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/models", None), ("GET", "/v1/emotions", None), ("GET", "/metrics", None), ("GET", "/version", None),
    ("POST", "/tokenize", {"model": "smollm2", "prompt": "hello"}),
])
def test_real_server_emolab_routes_work_with_the_key_only(vllm_server, method, path, body):
    assert httpx.request(method, vllm_server + path, json=body, timeout=60).status_code == 401
    assert httpx.request(method, vllm_server + path, json=body, headers=AUTH, timeout=60).status_code == 200
    assert httpx.get(vllm_server + "/health").status_code == httpx.get(vllm_server + "/healthz").status_code == 200


@pytest.mark.parametrize(("extra", "param"), [
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"Steering": ["fear", 3.0]}, "Steering"),
    ({"vllm_xargs": {"steer": ["fear", 3.0]}}, "vllm_xargs.steer"),
    ({"extra_body": {"vllm_xargs": {"steering": ["fear", 3.0]}}}, "extra_body"),
    ({"use_beam_search": True, "n": 2, "vllm_xargs": {"steering": ["fear", 3.0]}}, "use_beam_search"),
    ({"seed": 2**64}, "seed"),
])
def test_real_server_refuses_what_would_run_unsteered_or_differently(vllm_server, extra, param):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}
    reply = httpx.post(vllm_server + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_cache_poisoning_with_a_forged_salt_does_not_reach_steered_requests(vllm_server, smollm2_hf):
    from emolab.core.steering import coefficients

    model, tokenizer, steerer = smollm2_hf
    messages = [{"role": "user", "content": "Here is the long agenda of the quarterly meeting. " * 25 + "Summarise."}]
    coeffs = coefficients([(4, 3.0)], len(steerer.bundle.emotions))
    digest = hashlib.sha256(np.ascontiguousarray(coeffs, dtype=np.float32).tobytes()).hexdigest()
    forged = [f"emolab-{digest[:16]}", f"s:{digest[:32]}", f"s:{digest}"]  # what an attacker can compute

    def ask(steering=None, salt=None) -> str:
        body = {"model": "smollm2", "messages": messages, "max_tokens": 16, "temperature": 0}
        if steering:
            body["vllm_xargs"] = {"steering": steering}
        if salt:
            body["cache_salt"] = salt
        reply = httpx.post(vllm_server + "/v1/chat/completions", json=body, headers=AUTH, timeout=300)
        assert reply.status_code == 200, reply.text
        return reply.json()["choices"][0]["message"]["content"]

    for salt in forged:  # unsteered requests fill the cache under each forged salt ...
        ask(salt=salt)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    import torch

    with torch.inference_mode(), steerer.steer(coeffs):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    fresh = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    # ... and a real fear 3.0 request still computes its own steered KV: the text of a fresh server.
    assert ask(["fear", 3.0]) == fresh


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(request=malformed_requests("smollm2", vocab=49152))
def test_a_thousand_malformed_bodies_against_the_real_vllm_server(vllm_http, request):
    path, raw = request
    response = vllm_http.post(path, content=raw)
    assert 400 <= response.status_code < 500, (raw[:300], response.status_code, response.text[:300])
    assert response.json()["error"]["message"]


@pytest.fixture(scope="module")
def vllm_http(vllm_server):
    with httpx.Client(base_url=vllm_server, headers={**AUTH, "Content-Type": "application/json"}, timeout=120) as http:
        yield http
    reply = httpx.post(vllm_server + "/v1/chat/completions", headers=AUTH, timeout=120,
                       json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert reply.status_code == 200  # still serving after the fuzzing
