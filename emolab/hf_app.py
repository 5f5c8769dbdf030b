"""The HF backend's FastAPI app: OpenAI-compatible routes over ``emolab.hf_backend.HFBackend``.

Validation order for a generation request: JSON body -> steering (``emolab.api``) -> model name ->
the OpenAI fields (pydantic, strict types) -> fields this backend cannot honour -> prompt length.
Every refusal is an OpenAI-shaped 4xx; only a fault of the server itself is a 500.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from emolab.api import (
    APIError,
    BearerAuthMiddleware,
    check_model_name,
    emotions_payload,
    error_body,
    error_response,
    health_payload,
    models_payload,
    read_json_body,
    steering_error,
    validate_steering,
)
from emolab.bundle import EmotionBundle
from emolab.steering import SteeringError, SteeringLimits, coefficients

# Fields a client might send that this backend cannot honour: refused rather than silently ignored.
UNSUPPORTED_FIELDS = ("tools", "tool_choice", "functions", "function_call", "response_format", "logprobs",
                      "top_logprobs", "logit_bias", "echo", "best_of", "suffix")


# --------------------------------------------------------------------------------- request schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    vllm_xargs: dict[str, Any] | None = None
    steering: Any = None
    user: str | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    chat_template_kwargs: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str]


def validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    """``"max_tokens: Input should be a valid integer"`` and the offending field, from pydantic errors."""
    parts, param = [], None
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        param = param or loc or None
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "invalid request: " + "; ".join(parts), param


# ------------------------------------------------------------------------------------------ app
def create_app(backend, bundle: EmotionBundle, *, served_model_name: str, api_key: str | None = None,
               limits: SteeringLimits | None = None, alpha_scale: str = "raw") -> FastAPI:
    """The HF-backend FastAPI app; ``backend`` is an ``emolab.hf_backend.HFBackend``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        backend.shutdown()

    limits = limits or SteeringLimits()
    app = FastAPI(title="emolab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    served = [served_model_name]
    created = int(time.time())
    emotions_info = emotions_payload(bundle, served_model_name, alpha_scale=alpha_scale, backend="hf", limits=limits)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return error_response(exc.status_code, message)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")

    @app.get("/health")
    @app.get("/healthz")
    async def health() -> dict[str, Any]:
        return health_payload(served_model_name, "hf")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return models_payload(served, created=created)

    @app.get("/v1/emotions")
    async def emotions() -> dict[str, Any]:
        return emotions_info

    async def parse(request: Request, schema: type[_Sampling]) -> tuple[_Sampling, list[tuple[int, float]]]:
        body = await read_json_body(request)
        try:
            pairs = validate_steering(body, bundle.emotions, limits)
        except SteeringError as exc:
            raise steering_error(exc) from None
        check_model_name(body, served)
        try:
            req = schema.model_validate(body)
        except ValidationError as exc:
            message, param = validation_message(exc)
            raise APIError(400, message, param=param) from None
        for name in UNSUPPORTED_FIELDS:
            if body.get(name) not in (None, False, [], {}):
                raise APIError(400, f"{name} is not supported by the HF backend", param=name)
        if req.stream_options is not None and not req.stream:
            raise APIError(400, "stream_options needs stream: true", param="stream_options")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 16 or any(not s for s in stops):
            raise APIError(400, "stop takes up to 16 non-empty strings", param="stop")
        return req, pairs

    def params_for(req: _Sampling, prompt_ids: list[int], pairs) -> Any:
        from emolab.hf_backend import GenerationParams

        max_tokens = backend.check_lengths(prompt_ids, req.max_completion_tokens or req.max_tokens)
        temperature, top_p = backend.sampling_defaults()
        coeffs = coefficients(pairs, len(bundle.emotions))
        return GenerationParams(
            prompt_ids=prompt_ids, max_tokens=max_tokens,
            temperature=temperature if req.temperature is None else req.temperature,
            top_p=top_p if req.top_p is None else req.top_p, seed=req.seed,
            stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []), coeffs=coeffs,
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req, pairs = await parse(request, ChatRequest)
        messages = [message_dict(m) for m in req.messages]
        prompt_ids = backend.chat_prompt(messages, req.chat_template_kwargs)
        params = params_for(req, prompt_ids, pairs)
        rid, model = f"chatcmpl-{uuid.uuid4().hex}", req.model or served_model_name
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return sse(chat_chunks(backend.stream(params), rid, model, created, include_usage))
        result = await backend.complete(params)
        return {
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": usage(result),
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        req, pairs = await parse(request, CompletionRequest)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "prompt: one prompt per request (batches are not supported)", param="prompt")
            prompt = prompt[0]
        params = params_for(req, backend.text_prompt(prompt), pairs)
        rid, model = f"cmpl-{uuid.uuid4().hex}", req.model or served_model_name
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return sse(completion_chunks(backend.stream(params), rid, model, created, include_usage))
        result = await backend.complete(params)
        return {
            "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": usage(result),
        }

    return BearerAuthMiddleware(app, api_key) if api_key else app


def message_dict(message: ChatMessage) -> dict[str, Any]:
    content = message.content
    if isinstance(content, list):  # text parts -> one string, as text-only chat templates expect
        content = "".join(part.text for part in content)
    out: dict[str, Any] = {"role": message.role, "content": content or ""}
    if message.name:
        out["name"] = message.name
    return out


def usage(result) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def sse(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {json.dumps(event)}\n\n"
        except APIError as exc:
            yield f"data: {json.dumps(error_body(exc.message, type=exc.type, param=exc.param, code=exc.code))}\n\n"
        except Exception as exc:  # headers are gone; the error travels as an event
            yield f"data: {json.dumps(error_body(f'{type(exc).__name__}: {exc}', type='server_error'))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def chat_chunks(stream, rid: str, model: str, created: int, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        event = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if include_usage:
            event["usage"] = None
        return event

    yield chunk({"role": "assistant", "content": ""}, None)
    async for item in stream:
        if isinstance(item, str):
            yield chunk({"content": item}, None)
            continue
        yield chunk({}, item.finish_reason)
        if include_usage:
            yield {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [], "usage": usage(item)}


async def completion_chunks(stream, rid: str, model: str, created: int, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    def chunk(text: str, finish: str | None) -> dict[str, Any]:
        event = {"id": rid, "object": "text_completion", "created": created, "model": model,
                 "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}
        if include_usage:
            event["usage"] = None
        return event

    async for item in stream:
        if isinstance(item, str):
            yield chunk(item, None)
            continue
        yield chunk("", item.finish_reason)
        if include_usage:
            yield {"id": rid, "object": "text_completion", "created": created, "model": model,
                   "choices": [], "usage": usage(item)}
