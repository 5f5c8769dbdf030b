"""The shared HTTP contract (emolab.serve.contract): keys, auth, error shape, JSON bodies, steering, /v1/emotions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from emolab.core.bundle import EmotionBundle
from emolab.core.steering import SteeringError, SteeringLimits
from emolab.serve.contract import (
    APIError,
    APIKeyError,
    BearerAuthMiddleware,
    check_model_name,
    emotions_payload,
    error_body,
    error_response,
    is_authorized,
    models_payload,
    parse_json_body,
    resolve_api_key,
    validate_steering,
)

EMOTIONS = ["anger", "joy", "sadness", "disgust", "fear", "surprise"]
LIMITS = SteeringLimits(max_alpha=5.0, max_pairs=3)


def small_bundle(**metadata) -> EmotionBundle:
    vectors = {e: np.full((2, 4), i + 1, dtype=np.float32) for i, e in enumerate(EMOTIONS)}
    vectors["joy"][1] = [3.0, 4.0, 0.0, 0.0]  # norm 5 at layer 7
    return EmotionBundle(emotions=EMOTIONS, chosen_layers=[6, 7], vectors=vectors,
                         metadata={"model": "m", "num_layers": 12, **metadata})


def test_resolve_api_key_order(monkeypatch):
    monkeypatch.delenv("EMOLAB_API_KEY", raising=False)
    monkeypatch.delenv("EMOTION_STEERING_API_KEY", raising=False)
    assert resolve_api_key(None) is None
    monkeypatch.setenv("EMOTION_STEERING_API_KEY", "ref")
    assert resolve_api_key(None) == "ref"
    monkeypatch.setenv("EMOLAB_API_KEY", "env")
    assert resolve_api_key(None) == "env"
    assert resolve_api_key("cli") == "cli"


@pytest.mark.parametrize(("header", "key", "ok"), [
    (None, None, True), ("anything", None, True), (None, "k1", False), ("", "k1", False),
    ("Bearer k1", "k1", True), ("bearer k1", "k1", True), ("Bearer  k1 ", "k1", True),
    ("Bearer k2", "k1", False), ("Bearer k1x", "k1", False), ("k1", "k1", False), ("Basic k1", "k1", False),
    ("Bearer ", "k1", False),
])
def test_is_authorized(header, key, ok):
    assert is_authorized(header, key) is ok


def test_error_body_and_response_shape():
    assert error_body("bad", param="x", code="c") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "x", "code": "c"}
    }
    response = error_response(404, "gone", code="model_not_found")
    assert response.status_code == 404
    assert json.loads(response.body) == {
        "error": {"message": "gone", "type": "invalid_request_error", "param": None, "code": "model_not_found"}
    }
    assert json.loads(APIError(429, "busy").response().body)["error"]["type"] == "rate_limit_error"


def test_auth_middleware_denies_by_default():
    async def ok(request):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/health", ok), Route("/healthz", ok), Route("/v1/models", ok), Route("/v1x", ok),
                            Route("/invocations", ok, methods=["POST"])])
    client = TestClient(BearerAuthMiddleware(app, "secret"))
    assert client.get("/health").text == client.get("/healthz").text == "ok"
    for method, path in (("GET", "/v1/models"), ("GET", "/v1x"), ("POST", "/invocations"), ("GET", "/no-such-path"),
                         ("GET", "/health/"), ("GET", "/HEALTH")):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/models", headers={"Authorization": "Bearer secret"}).text == "ok"
    assert client.post("/invocations", headers={"Authorization": "Bearer secret"}).text == "ok"


def test_auth_middleware_closes_websockets_without_the_key():
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocketDisconnect

    async def echo(websocket):
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    client = TestClient(BearerAuthMiddleware(Starlette(routes=[WebSocketRoute("/v1/realtime", echo)]), "secret"))
    with pytest.raises(WebSocketDisconnect) as info, client.websocket_connect("/v1/realtime"):
        pass
    assert info.value.code == 1008
    with client.websocket_connect("/v1/realtime", headers={"Authorization": "Bearer secret"}) as ws:
        assert ws.receive_text() == "hello"


@pytest.mark.parametrize("key", [" key", "key ", "key\n", "k\u00e9y", "ключ", "a\tb"])
def test_keys_no_client_could_send_are_refused(key, monkeypatch):
    with pytest.raises(APIKeyError):
        resolve_api_key(key)
    monkeypatch.setenv("EMOLAB_API_KEY", key)
    with pytest.raises(APIKeyError, match="EMOLAB_API_KEY"):
        resolve_api_key(None)


def test_parse_json_body_accepts_an_object():
    assert parse_json_body(b' {"a": [1, 2.5]} ') == {"a": [1, 2.5]}


@pytest.mark.parametrize(("raw", "status", "words"), [
    (b"", 400, "empty"), (b"   ", 400, "empty"), (b"{bad", 400, "not valid JSON"), (b"[1]", 400, "JSON array"),
    (b'"text"', 400, "JSON string"), (b"null", 400, "JSON null"), (b"3", 400, "JSON number"),
    (b"\xff\xfe{}", 400, "UTF-8"), (b"[" * 100_000, 400, "nested"), (b"{}" + b" " * 5000, 413, "bytes"),
    (b'{"seed": ' + b"9" * 5000 + b"}", 400, "JSON parsing refused"),
])
def test_parse_json_body_refusals(raw, status, words):
    with pytest.raises(APIError) as info:
        parse_json_body(raw, max_bytes=4096 if status == 413 else 1 << 20)
    assert info.value.status == status
    assert words in info.value.message


def test_validate_steering_accepts():
    assert validate_steering({}, EMOTIONS, LIMITS) == []
    assert validate_steering({"vllm_xargs": {}}, EMOTIONS, LIMITS) == []
    assert validate_steering({"vllm_xargs": {"steering": [0, 1.0, 2, 0.5]}}, EMOTIONS, LIMITS) == [(0, 1.0), (2, 0.5)]
    assert validate_steering({"steering": ["fear", -1.5, "Joy", 2]}, EMOTIONS, LIMITS) == [(4, -1.5), (1, 2.0)]
    assert validate_steering({"vllm_xargs": {"steering": [4.0, "0.5"]}}, EMOTIONS, LIMITS) == [(4, 0.5)]
    assert validate_steering({"steering": None}, EMOTIONS, LIMITS) == []


# Each malformed body, and words its error message must contain.
MALFORMED = [
    ([1, 2], "JSON object", None),
    ("body", "JSON object", None),
    (None, "JSON object", None),
    ({"vllm_xargs": [0, 1.0]}, "vllm_xargs must be a JSON object", "vllm_xargs"),
    ({"vllm_xargs": "steering"}, "vllm_xargs must be a JSON object", "vllm_xargs"),
    ({"vllm_xargs": {"steering": [0, 1]}, "steering": [0, 1]}, "give steering once", "steering"),
    ({"vllm_xargs": {"steering": [0]}}, "odd number", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [0, 1.0, 2]}}, "odd number", "vllm_xargs.steering"),
    ({"steering": [0]}, "odd number", "steering"),
    ({"vllm_xargs": {"steering": "fear"}}, "flat list", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": {"fear": 1.0}}}, "flat list", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": 3}}, "flat list", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [6, 1.0]}}, "unknown emotion id 6", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [-1, 1.0]}}, "unknown emotion id -1", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [99, 1.0]}}, "unknown emotion id 99", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": ["rage", 1.0]}}, "unknown emotion 'rage'", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": ["", 1.0]}}, "unknown emotion", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [1.5, 1.0]}}, "integer id or a name", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [True, 1.0]}}, "boolean", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [None, 1.0]}}, "integer id or a name", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [[0], 1.0]}}, "integer id or a name", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [0, "abc"]}}, "alpha must be a number", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [0, None]}}, "alpha must be a number", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [0, False]}}, "alpha must be a number", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [0, [1.0]]}}, "alpha must be a number", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [0, float("nan")]}}, "finite", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [0, float("inf")]}}, "finite", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [0, "-inf"]}}, "finite", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [0, 5.5]}}, "exceeds the server's bound 5.0", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [0, -1e9]}}, "exceeds the server's bound", "vllm_xargs.steering"),
    ({"vllm_xargs": {"steering": [0, 1, 1, 1, 2, 1, 3, 1]}}, "4 pairs; at most 3", "vllm_xargs.steering"),
    ({"steering": ["fear", "lots"]}, "alpha must be a number", "steering"),
]


@pytest.mark.parametrize(("body", "words", "param"), MALFORMED)
def test_validate_steering_refusals(body, words, param):
    assert len(MALFORMED) >= 30
    with pytest.raises(SteeringError) as info:
        validate_steering(body, EMOTIONS, LIMITS)
    assert words in str(info.value)
    assert info.value.param == param


def test_check_model_name():
    check_model_name({}, ["smol"])
    check_model_name({"model": None}, ["smol"])
    check_model_name({"model": "smol"}, ["smol"])
    with pytest.raises(APIError) as info:
        check_model_name({"model": "gpt-4"}, ["smol"])
    assert (info.value.status, info.value.code, info.value.param) == (404, "model_not_found", "model")
    with pytest.raises(APIError) as info:
        check_model_name({"model": 3}, ["smol"])
    assert info.value.status == 400


def test_emotions_payload():
    bundle = small_bundle(alpha_recommendations={"joy": 1.5}, validated_alpha_range=[-0.5, 2.0])
    payload = emotions_payload(bundle, "served", alpha_scale="normalized", backend="vllm", limits=LIMITS)
    assert payload["emotions"] == EMOTIONS
    assert payload["id_map"] == {e: i for i, e in enumerate(EMOTIONS)}
    assert payload["chosen_layers"] == [6, 7]
    assert (payload["model"], payload["hidden"], payload["num_layers"]) == ("served", 4, 12)
    assert (payload["backend"], payload["alpha_scale"]) == ("vllm", "normalized")
    assert payload["limits"] == {"max_alpha": 5.0, "max_pairs": 3}
    assert payload["alpha_recommendations"] == {"joy": 1.5}
    assert payload["validated_alpha_range"] == [-0.5, 2.0]
    assert payload["vector_norms"]["joy"] == [4.0, 5.0]  # [2,2,2,2] and [3,4,0,0]
    assert payload["metadata"]["validated_alpha_range"] == [-0.5, 2.0]  # the reference tool's 'metadata' key
    json.dumps(payload)  # JSON-ready as is
    big = emotions_payload(small_bundle(auc_matrix=[[0.5] * 3] * 2, data_source="bundled:/srv/x"), "served")
    assert "auc_matrix" not in big["metadata"] and "data_source" not in big["metadata"]
    plain = emotions_payload(small_bundle(), "served")
    assert "alpha_recommendations" not in plain and plain["alpha_scale"] == "raw"


def test_models_payload():
    assert models_payload(["a"], created=5) == {
        "object": "list", "data": [{"id": "a", "object": "model", "created": 5, "owned_by": "emolab"}]
    }
