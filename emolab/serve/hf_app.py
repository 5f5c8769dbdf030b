"""The HF backend's FastAPI app: OpenAI-compatible routes over ``emolab.serve.hf_backend.HFBackend``.

Validation of a generation request: JSON body -> the shared contract (``emolab.serve.schema``:
field names, steering, model name, OpenAI fields) -> fields this backend cannot honour -> prompt
length. Every refusal is an OpenAI-shaped 4xx; only a fault of the server itself is a 500.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from emolab.core.bundle import EmotionBundle
from emolab.core.steering import SteeringLimits, coefficients
from emolab.serve.contract import (
    APIError,
    BearerAuthMiddleware,
    emotions_payload,
    error_body,
    error_response,
    health_payload,
    models_payload,
    read_json_body,
)
from emolab.serve.hf_backend import Delta, GenerationParams, HFBackend
from emolab.serve.logprobs import chat_logprobs, completion_logprobs
from emolab.serve.schema import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    GENERATION_SCHEMAS,
    READOUT_RESPONSE,
    ChatMessage,
    ChatRequest,
    RequestContract,
    ValidatedRequest,
    chat_template_args,
    response_readout,
    validate_generation,
)

__all__ = ["create_app"]

logger = logging.getLogger("emolab.hf")

# Fields accepted when they ask for nothing but the default: an openai client may send them as such.
DEFAULT_ONLY_FIELDS: dict[str, tuple[Any, ...]] = {
    "echo": (None, False), "best_of": (None, 1),
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "store": (None, False),
    "parallel_tool_calls": (None,), "metadata": (None, {}),
}
MESSAGE_FIELDS = ("role", "content", "name")


def check_hf_support(validated: ValidatedRequest) -> None:
    """Refuse every field the HF backend cannot honour, instead of silently ignoring it."""
    body = validated.body
    honoured = GENERATION_SCHEMAS[CHAT_PATH if isinstance(validated.request, ChatRequest) else COMPLETIONS_PATH]
    for name, value in body.items():
        if name in honoured.model_fields:
            continue
        # Compared with the type too: True == 1, yet "n": true is a malformed request, not a default.
        if any(value == ok and type(value) is type(ok) for ok in DEFAULT_ONLY_FIELDS.get(name, ())):
            continue
        raise APIError(400, f"{name} is not supported by the HF backend (use --backend vllm)", param=name,
                       code="unsupported_field")
    if isinstance(validated.request, ChatRequest):
        for i, message in enumerate(body["messages"]):
            extra = sorted(set(message) - set(MESSAGE_FIELDS))
            if extra:
                raise APIError(400, f"messages[{i}].{extra[0]} is not supported by the HF backend",
                               param=f"messages.{i}.{extra[0]}", code="unsupported_field")


# ------------------------------------------------------------------------------------------ app
def create_app(backend: HFBackend, bundle: EmotionBundle, *, served_model_names: Sequence[str],
               api_key: str | None = None, limits: SteeringLimits | None = None, alpha_scale: str = "raw") -> ASGIApp:
    """The HF-backend app (behind the key when one is set); ``served_model_names[0]`` is the primary name."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        backend.shutdown()

    limits = limits or SteeringLimits()
    app = FastAPI(title="emolab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    served = list(served_model_names)
    if not served:
        raise ValueError("a server needs at least one model name")
    served_model_name = served[0]
    created = int(time.time())
    emotions_info = emotions_payload(bundle, served_model_name, alpha_scale=alpha_scale, backend="hf", limits=limits)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError):
        return error_response(400, "invalid request")  # bodies are read by hand; kept as a safety net

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return error_response(exc.status_code, message)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # The details go to the server log, never to the client (they can reveal paths and internals).
        incident = uuid.uuid4().hex[:12]
        logger.exception("internal error %s on %s %s", incident, request.method, request.url.path)
        return error_response(500, f"internal error (incident {incident}; see the server log)", type="server_error")

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

    contract = RequestContract(tuple(bundle.steering_names), limits, tuple(served), xargs_keys=frozenset(),
                               chat=bool(getattr(backend.tokenizer, "chat_template", None)))

    async def parse(request: Request, path: str) -> ValidatedRequest:
        validated = validate_generation(await read_json_body(request), path, contract)
        check_hf_support(validated)
        return validated

    def params_for(req: Any, prompt_ids: list[int], validated: ValidatedRequest, logprobs: int | None) -> GenerationParams:
        max_tokens = backend.check_lengths(prompt_ids, req.max_completion_tokens or req.max_tokens)
        temperature, top_p = backend.sampling_defaults()
        coeffs = coefficients(validated.pairs, len(bundle.steering_names))
        return GenerationParams(
            prompt_ids=prompt_ids, max_tokens=max_tokens,
            temperature=temperature if req.temperature is None else req.temperature,
            top_p=top_p if req.top_p is None else req.top_p, seed=req.seed,
            stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []), coeffs=coeffs,
            logprobs=logprobs, ignore_eos=req.ignore_eos, steering=validated.steering, readout=validated.readout,
        )

    async def answer(request: Request, req: Any, params: GenerationParams, kind: str, id_prefix: str,
                     chunks: Callable[..., Any], choice: Callable[[Any], dict[str, Any]]) -> Any:
        """A stream of SSE chunks, or the whole reply (cancelled if the client goes away); ``n`` choices, each a
        generation of its own (batched together), a seeded request's choice i drawn with seed + i as vLLM does."""
        rid, model = f"{id_prefix}-{uuid.uuid4().hex}", req.model or served_model_name
        choices = [params] + [replace(params, seed=None if params.seed is None else params.seed + i)
                              for i in range(1, req.n or 1)]
        backend.check_choices(len(choices))  # before a stream's headers go out
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return sse(chunks(backend.stream_all(choices), len(choices), rid, model, created, include_usage,
                              params.logprobs))
        results = await backend.complete_all(choices, disconnected=request.is_disconnected)
        body = {"id": rid, "object": kind, "created": int(time.time()), "model": model,
                "choices": [{"index": i, "logprobs": None, **choice(result), "finish_reason": result.finish_reason}
                            for i, result in enumerate(results)],
                "usage": usage(results)}
        if params.readout:
            body[READOUT_RESPONSE] = response_readout([result.readout for result in results])
        return body

    @app.post(CHAT_PATH)
    async def chat_completions(request: Request):
        validated = await parse(request, CHAT_PATH)
        req = validated.request
        messages = [message_dict(m) for m in req.messages]
        prompt_ids = backend.chat_prompt(messages, chat_template_args(req))
        top = (req.top_logprobs or 0) if req.logprobs else None
        params = params_for(req, prompt_ids, validated, top)

        def choice(result) -> dict[str, Any]:
            logprobs = None if top is None else chat_logprobs(result.logprobs, top)
            return {"message": {"role": "assistant", "content": result.text}, "logprobs": logprobs}

        return await answer(request, req, params, "chat.completion", "chatcmpl", chat_chunks, choice)

    @app.post(COMPLETIONS_PATH)
    async def completions(request: Request):
        validated = await parse(request, COMPLETIONS_PATH)
        req = validated.request
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "prompt: one prompt per request (batches are not supported)", param="prompt")
            prompt = prompt[0]
        top = req.logprobs
        params = params_for(req, backend.text_prompt(prompt), validated, top)

        def choice(result) -> dict[str, Any]:
            return {"text": result.text, "logprobs": None if top is None else completion_logprobs(result.logprobs, top)}

        return await answer(request, req, params, "text_completion", "cmpl", completion_chunks, choice)

    return BearerAuthMiddleware(app, api_key) if api_key else app


def message_dict(message: ChatMessage) -> dict[str, Any]:
    content = message.content
    if isinstance(content, list):  # text parts -> one string, as text-only chat templates expect
        content = "".join(part.text for part in content)
    out: dict[str, Any] = {"role": message.role, "content": content or ""}
    if message.name:
        out["name"] = message.name
    return out


def usage(results: Sequence[Any]) -> dict[str, int]:
    """The prompt counted once, the completions of every choice summed (as vLLM counts them)."""
    prompt, completion = results[0].prompt_tokens, sum(result.completion_tokens for result in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def closing(finish: dict[str, Any], results: dict[int, Any], n: int,
            usage_head: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A choice's finish chunk; after the last of the ``n`` choices' (``results``: index -> result), the usage chunk
    when one is asked for (``usage_head``: its fields but usage), the last chunk carrying the readout when the
    request asked for one."""
    if len(results) < n:
        return [finish]
    ordered = [results[i] for i in range(n)]
    events = [finish] if usage_head is None else [finish, {**usage_head, "usage": usage(ordered)}]
    if ordered[0].readout is not None:
        events[-1] = {**events[-1], READOUT_RESPONSE: response_readout([result.readout for result in ordered])}
    return events


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


async def chat_chunks(stream, n: int, rid: str, model: str, created: int, include_usage: bool,
                      top: int | None) -> AsyncIterator[dict[str, Any]]:
    def chunk(index: int, delta: dict[str, Any], finish: str | None,
              logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        event = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]}
        if include_usage:
            event["usage"] = None
        return event

    for index in range(n):
        yield chunk(index, {"role": "assistant", "content": ""}, None)
    results: dict[int, Any] = {}
    async for index, item in stream:
        if isinstance(item, Delta):
            yield chunk(index, {"content": item.text}, None,
                        None if top is None else chat_logprobs(item.logprobs, top))
            continue
        results[index] = item
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": []}
        for event in closing(chunk(index, {}, item.finish_reason), results, n, head if include_usage else None):
            yield event


async def completion_chunks(stream, n: int, rid: str, model: str, created: int, include_usage: bool,
                            top: int | None) -> AsyncIterator[dict[str, Any]]:
    def chunk(index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        event = {"id": rid, "object": "text_completion", "created": created, "model": model,
                 "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}]}
        if include_usage:
            event["usage"] = None
        return event

    offsets = [0] * n  # text_offset runs on across a choice's chunks, over the tokens' own strings (as vLLM counts)
    results: dict[int, Any] = {}
    async for index, item in stream:
        if isinstance(item, Delta):
            logprobs = None if top is None else completion_logprobs(item.logprobs, top, offsets[index])
            offsets[index] += sum(len(s.tokens[0]) for s in item.logprobs)
            yield chunk(index, item.text, None, logprobs)
            continue
        results[index] = item
        head = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": []}
        for event in closing(chunk(index, "", item.finish_reason), results, n, head if include_usage else None):
            yield event
