"""The HTTP contract shared by both serving backends (HF and vLLM): auth, errors, steering, payloads.

Nothing here knows about a model or an app's state, so the HF app and the ASGI layer in front of
vLLM's own server validate requests with the same code and answer with the same error bodies.
Errors are OpenAI-shaped: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from emolab.core.bundle import EmotionBundle
from emolab.core.errors import EmolabError
from emolab.core.readout import READ_AT, readout_scale
from emolab.core.steering import MODES, SCOPES, SteeringError, SteeringLimits, parse_steering, steering_field

__all__ = [
    "API_KEY_ENV_VARS", "APIError", "APIKeyError", "BearerAuthMiddleware", "OPEN_PATHS", "check_api_key",
    "check_model_name", "emotions_payload", "error_body", "error_response", "health_payload", "is_authorized",
    "json_type", "models_payload", "needs_auth", "parse_json_body", "read_json_body", "resolve_api_key",
    "steering_error", "validate_steering",
]

API_KEY_ENV_VARS = ("EMOLAB_API_KEY", "EMOTION_STEERING_API_KEY")  # the second for users of the reference tool
# The only routes open without the key (load balancers and `wait_for_health` poll them). Everything
# else, including routes a future vLLM adds and paths that do not exist, answers 401 without it.
OPEN_PATHS = ("/health", "/healthz")

# OpenAI's error ``type`` for each status we answer with.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


class APIError(Exception):
    """A request the server refuses; turned into an OpenAI-shaped JSON error response."""

    def __init__(
        self, status: int, message: str, *, type: str | None = None, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.param = param
        self.code = code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, type=self.type, param=self.param, code=self.code)


class APIKeyError(EmolabError, ValueError):
    """A server key that no client could ever send (refused at start-up)."""


# ----------------------------------------------------------------------------------------- auth
def resolve_api_key(cli_value: str | None) -> str | None:
    """The server key: ``--api-key``, else ``$EMOLAB_API_KEY``, else ``$EMOTION_STEERING_API_KEY``; None = open.

    A key that could never match a header (surrounding whitespace, non-ASCII or control characters)
    raises ``APIKeyError``: otherwise every request would be refused with no hint why.
    """
    if cli_value:
        return check_api_key(cli_value, "the API key")
    for name in API_KEY_ENV_VARS:
        value = os.environ.get(name)
        if value:
            return check_api_key(value, f"${name}")
    return None


def check_api_key(key: str, source: str) -> str:
    """The key itself, or ``APIKeyError`` saying why clients could not send it in a header."""
    if key != key.strip():
        raise APIKeyError(f"{source} has leading or trailing whitespace, which an Authorization header cannot carry")
    if not key.isascii() or not key.isprintable():
        raise APIKeyError(f"{source} holds non-ASCII or control characters; HTTP clients send headers as ASCII")
    return key


def is_authorized(authorization_header: str | None, key: str | None) -> bool:
    """True when no key is set, or the header is ``Bearer <key>`` (compared in constant time)."""
    if not key:
        return True
    if not authorization_header:
        return False
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), key.encode())


def needs_auth(path: str) -> bool:
    """Deny by default: every path but ``/health`` and ``/healthz`` is behind the key."""
    return path not in OPEN_PATHS


class BearerAuthMiddleware:
    """Pure-ASGI key check (streaming-safe) in front of a whole app: without the right bearer token,
    every HTTP request but the open health paths gets a 401 and every websocket is closed (1008)."""

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key and scope["type"] in ("http", "websocket") and needs_auth(scope["path"]):
            headers = dict(scope.get("headers") or [])
            header = headers.get(b"authorization")
            if not is_authorized(header.decode("latin-1") if header is not None else None, self.key):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong API key"})
                else:
                    await unauthorized_response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def unauthorized_response() -> JSONResponse:
    response = error_response(
        401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'", code="invalid_api_key"
    )
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


# --------------------------------------------------------------------------------------- errors
def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    status: int, message: str, *, type: str | None = None, param: str | None = None, code: str | None = None
) -> JSONResponse:
    kind = type or ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse(error_body(message, type=kind, param=param, code=code), status_code=status)


def steering_error(exc: SteeringError) -> APIError:
    return APIError(400, str(exc), param=exc.param, code="invalid_steering")


# -------------------------------------------------------------------------------------- requests
async def read_json_body(request: Request, *, max_bytes: int = 4 << 20) -> dict[str, Any]:
    """The request body as a JSON object, or an ``APIError`` (400/413) saying what is wrong with it."""
    raw = await request.body()
    return parse_json_body(raw, max_bytes=max_bytes)


def parse_json_body(raw: bytes, *, max_bytes: int = 4 << 20) -> dict[str, Any]:
    """The body as a JSON object, or an ``APIError`` (400/413) saying what is wrong with it."""
    if len(raw) > max_bytes:
        raise APIError(413, f"request body is {len(raw)} bytes; at most {max_bytes} are accepted")
    if not raw.strip():
        raise APIError(400, "request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, "request body is not UTF-8 text") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise APIError(400, f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise APIError(400, "request body is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal beyond Python's int-string conversion limit
        raise APIError(400, f"request body holds a value JSON parsing refused: {str(exc)[:120]}") from None
    if not isinstance(body, dict):
        raise APIError(400, f"request body must be a JSON object, got a JSON {json_type(body)}")
    return body


def json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def validate_steering(
    body: Any, emotions: list[str], limits: SteeringLimits | None = None
) -> list[tuple[int, float]]:
    """The request's steering as ``[(emotion_id, alpha), ...]`` ([] = plain model); raises ``SteeringError``."""
    limits = limits or SteeringLimits()
    if not isinstance(body, dict):
        raise SteeringError(f"request body must be a JSON object, got a JSON {json_type(body)}", param=None)
    found = steering_field(body)
    if found is None:
        return []
    raw, param = found
    return parse_steering(raw, list(emotions), limits, param=param)


def check_model_name(body: dict[str, Any], served_names: list[str] | tuple[str, ...]) -> None:
    """Unknown ``model`` -> 404 ``model_not_found`` (as OpenAI does); absent/null means the served model."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise APIError(400, f"model must be a string, got a JSON {json_type(model)}", param="model")
    if model not in served_names:
        raise APIError(
            404, f"the model {model!r} does not exist here; this server serves {list(served_names)}",
            param="model", code="model_not_found",
        )


# ------------------------------------------------------------------------------------- payloads
def emotions_payload(
    bundle: EmotionBundle,
    served_model_name: str,
    *,
    alpha_scale: str = "raw",
    backend: str = "hf",
    limits: SteeringLimits | None = None,
) -> dict[str, Any]:
    """``GET /v1/emotions``: what a client needs to build a steering list."""
    limits = limits or SteeringLimits()
    meta = bundle.metadata
    payload: dict[str, Any] = {
        "object": "emotions",
        "emotions": list(bundle.emotions),
        "id_map": {name: i for i, name in enumerate(bundle.steering_names)},
        "derived": {name: {k: v for k, v in info.items() if k != "fit_r"}
                    for name, info in (meta.get("derived") or {}).items()} if bundle.derived else {},
        "steerable": bundle.steering_names,
        "chosen_layers": list(bundle.chosen_layers),
        "model": served_model_name,
        "bundle_model": bundle.model,
        "bundle_sha256": bundle.fingerprint(),
        "hidden": bundle.hidden,
        "num_layers": bundle.num_layers,
        "backend": backend,
        "alpha_scale": alpha_scale,
        "steering_field": "vllm_xargs.steering",
        "steering_format": "flat list [emotion id or name, alpha, ...]; repeated ids add",
        "limits": {"max_alpha": limits.max_alpha, "max_pairs": limits.max_pairs},
        "controls": {
            "steering_scope": {"values": list(SCOPES), "default": "all",
                               "meaning": "steer every position, the prompt's only, or the generated tokens' only"},
            "steering_modes": {"values": list(MODES), "default": "add",
                               "format": "flat list [emotion, mode, ...] (top level also {emotion: mode})",
                               "meaning": "add alpha x v; ablate: project the direction out; clamp: hold the "
                                          "projection at alpha x |v| (alpha from steering, on this alpha scale)"},
        },
        "readout": {"field": "readout", "values": [True, "per_token"], "response_field": "emotion_readout",
                    **readout_scale(bundle).to_json(), "read_at": READ_AT},
        "vector_norms": {e: [round(x, 6) for x in norms] for e, norms in bundle.norms().items()},
    }
    for key in ("alpha_recommendations", "alpha_recommendations_scale", "validated_alpha_range", "normalization",
                "convention_inject"):
        if meta.get(key) is not None:
            payload[key] = meta[key]
    # The bundle's metadata, as the reference tool's server reports it, less the large AUC matrices and
    # the server-side path the texts came from.
    payload["metadata"] = {k: v for k, v in meta.items() if not k.startswith("auc_matrix") and k != "data_source"}
    return payload


def models_payload(served_names: list[str] | tuple[str, ...], *, created: int | None = None) -> dict[str, Any]:
    """``GET /v1/models`` in OpenAI's list shape."""
    created = int(time.time()) if created is None else created
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "emolab"} for name in served_names],
    }


def health_payload(model: str, backend: str) -> dict[str, Any]:
    return {"status": "ok", "model": model, "backend": backend}
