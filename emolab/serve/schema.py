"""The one validation path of a generation request, shared by the HF app and the vLLM middleware.

Order: field names (near-misses of emolab's own fields get a 400 with a hint instead of being
silently ignored) -> steering -> model name -> the OpenAI fields both backends read (pydantic,
strict types, bounded integers) -> cross-field rules. Each refusal is an ``APIError`` (4xx) whose
message says what is wrong and whose ``param`` names the field.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emolab.core.steering import MODES_FIELD, SCOPE_FIELD, Steering, SteeringError, SteeringLimits
from emolab.serve.contract import APIError, check_model_name, json_type, steering_error

__all__ = [
    "CHAT_PATH", "COMPLETIONS_PATH", "GENERATION_SCHEMAS", "MAX_TOP_LOGPROBS", "NO_CHAT_TEMPLATE", "READOUT_FIELD",
    "READOUT_KINDS", "READOUT_RESPONSE", "STEERING_XARGS", "ChatMessage", "ChatRequest", "CompletionRequest",
    "RequestContract", "ValidatedRequest", "chat_template_args", "check_prefill", "parse_readout",
    "response_readout", "validate_generation", "validation_message",
]

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
ROLES = ("system", "developer", "user", "assistant", "tool")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TOKENS_BOUND = 2**31 - 1  # far beyond any context; keeps integers inside what engines store
MAX_TOP_LOGPROBS = 20  # vLLM's default max_logprobs
STEERING_XARGS = frozenset({"steering", SCOPE_FIELD, MODES_FIELD})  # vllm_xargs keys of emolab's steering
READOUT_FIELD = "readout"  # top level: true (means over prompt and generated tokens) or "per_token" (also each token)
READOUT_RESPONSE = "emotion_readout"  # the response field a readout comes back in (both backends)
READOUT_KINDS = ("means", "per_token")
NO_CHAT_TEMPLATE = ("this model has no chat template (a base model): send the text to continue to /v1/completions, "
                    "or start the server with --chat-template FILE")


class _Strict(BaseModel):
    # extra="allow": the vLLM backend honours many more fields than are checked here.
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
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    vllm_xargs: dict[str, Any] | None = None
    steering: Any = None
    steering_scope: Any = None
    steering_modes: Any = None
    readout: Any = None
    user: str | None = None
    cache_salt: str | None = None
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens through end-of-sequence tokens


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    chat_template_kwargs: dict[str, Any] | None = None
    # vLLM's chat fields for a prefilled reply: the final (assistant) message is continued, not answered.
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)  # the top-k size, as OpenAI's legacy API


GENERATION_SCHEMAS: dict[str, type[_Sampling]] = {CHAT_PATH: ChatRequest, COMPLETIONS_PATH: CompletionRequest}


@dataclass(frozen=True)
class RequestContract:
    """What one server accepts: its emotions, limits and model names, and its ``vllm_xargs`` keys.

    ``xargs_keys``: the ``vllm_xargs`` keys honoured besides ``steering``; ``None`` passes any other
    key on (vLLM hands them to its plugins), but a near-miss of ``steering`` is refused either way.
    ``served_names``: the model names accepted in ``model``; ``None`` leaves that check to the server
    behind (plain ``vllm serve`` before its names are known). ``chat``: False when the model has no
    chat template and none was given: chat requests get a 400 (``NO_CHAT_TEMPLATE``).
    """

    emotions: tuple[str, ...]
    limits: SteeringLimits
    served_names: tuple[str, ...] | None
    xargs_keys: frozenset[str] | None = None
    chat: bool = True


@dataclass
class ValidatedRequest:
    body: dict[str, Any]
    request: _Sampling
    pairs: list[tuple[int, float]]  # (emotion id, alpha); [] = the plain model
    steering: Steering = Steering()  # the pairs with their modes and scope
    readout: str | None = None  # None, "means" or "per_token"


def parse_readout(body: dict[str, Any]) -> str | None:
    """The request's readout: None (not asked), ``"means"`` or ``"per_token"``; a bad value is a 400."""
    xargs = body.get("vllm_xargs")
    if isinstance(xargs, dict) and READOUT_FIELD in xargs:
        raise APIError(400, "readout is a top-level field of the request, not a vllm_xargs entry",
                       param=f"vllm_xargs.{READOUT_FIELD}")
    raw = body.get(READOUT_FIELD)
    if raw is None or raw is False:
        return None
    if raw is True:
        return "means"
    if raw == "per_token":
        return "per_token"
    if isinstance(raw, dict) and set(raw) <= {"per_token"} and isinstance(raw.get("per_token", False), bool):
        return "per_token" if raw.get("per_token") else "means"
    raise APIError(400, f"readout takes true, false, \"per_token\" or {{\"per_token\": true|false}}; got a JSON "
                        f"{json_type(raw)}", param=READOUT_FIELD)


def response_readout(readouts: Sequence[Any]) -> Any:
    """What ``READOUT_RESPONSE`` holds, on both backends: the one choice's readout, or for n > 1 a list of one
    per choice in their order."""
    return readouts[0] if len(readouts) == 1 else list(readouts)


def validate_generation(body: dict[str, Any], path: str, contract: RequestContract) -> ValidatedRequest:
    """Check one chat or text-completion body; raise ``APIError`` (4xx) on the first problem."""
    schema = GENERATION_SCHEMAS[path]
    check_field_names(body, schema, contract)
    if not isinstance(body, dict):
        raise APIError(400, f"request body must be a JSON object, got a JSON {json_type(body)}")
    try:
        steering = Steering.from_body(body, list(contract.emotions), contract.limits)
    except SteeringError as exc:
        raise steering_error(exc) from None
    pairs = list(steering.pairs)
    readout = parse_readout(body)
    if contract.served_names is not None:
        check_model_name(body, contract.served_names)
    if path == CHAT_PATH and not contract.chat:
        raise APIError(400, NO_CHAT_TEMPLATE, param="messages", code="no_chat_template")
    try:
        request = schema.model_validate(body)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise APIError(400, message, param=param) from None
    if steering and body.get("use_beam_search"):
        # vLLM builds beam-search requests without extra_args: the steering would silently vanish.
        raise APIError(400, "steering cannot be combined with use_beam_search", param="use_beam_search")
    if isinstance(request, ChatRequest) and request.top_logprobs and not request.logprobs:
        # As vLLM: 0 asks for nothing and passes; any other value needs logprobs: true.
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    if isinstance(request, ChatRequest):
        check_prefill(request)
    if request.stream_options is not None and not request.stream:
        raise APIError(400, "stream_options needs stream: true", param="stream_options")
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stops) > 16 or any(not s for s in stops):
        raise APIError(400, "stop takes up to 16 non-empty strings", param="stop")
    if isinstance(request, CompletionRequest) and isinstance(request.prompt, list) and not request.prompt:
        raise APIError(400, "prompt is an empty list", param="prompt")
    return ValidatedRequest(body=body, request=request, pairs=pairs, steering=steering, readout=readout)


def check_prefill(request: ChatRequest) -> None:
    """``continue_final_message`` (a reply begun by the client, continued by the model) as vLLM reads it: never
    with a generation prompt, and only after an assistant message with text to continue."""
    if not request.continue_final_message:
        return
    if request.add_generation_prompt:
        raise APIError(400, "continue_final_message needs add_generation_prompt: false (a prefilled reply is "
                            "continued, not answered)", param="continue_final_message")
    last = request.messages[-1]
    if last.role != "assistant" or not last.content:
        raise APIError(400, "continue_final_message continues the last message, which must be an assistant "
                            f"message with text (the last is a {last.role} message"
                            f"{'' if last.content else ' without text'})", param="messages")


def chat_template_args(request: ChatRequest) -> dict[str, Any]:
    """The chat template's keyword arguments for ``request``, merged as vLLM merges them: its
    ``chat_template_kwargs``, overridden by the top-level ``add_generation_prompt`` and
    ``continue_final_message``."""
    return {**(request.chat_template_kwargs or {}), "add_generation_prompt": request.add_generation_prompt,
            "continue_final_message": request.continue_final_message}


def check_field_names(body: dict[str, Any], schema: type[_Sampling], contract: RequestContract) -> None:
    """Refuse a field that looks like a misspelling of emolab's own (it would otherwise be ignored)."""
    for key in body:
        if key in schema.model_fields:
            continue
        if key == "extra_body":
            raise APIError(400, "extra_body is an argument of the openai Python client, not a request field: put "
                                "its contents (e.g. vllm_xargs) at the top level of the JSON body",
                           param=key, code="unknown_field")
        hint = _near_miss(key)
        if hint:
            raise APIError(400, f"unknown field {key!r}: did you mean {hint!r}? Steering goes in "
                                "vllm_xargs.steering (or a top-level steering)", param=key, code="unknown_field")
    xargs = body.get("vllm_xargs")
    if not isinstance(xargs, dict):
        return
    for key in xargs:
        if key in STEERING_XARGS:
            continue
        if _near_miss(key) or (contract.xargs_keys is not None and key not in contract.xargs_keys):
            raise APIError(400, f"vllm_xargs.{key} is not a field this server reads; steering goes in "
                                "vllm_xargs.steering", param=f"vllm_xargs.{key}", code="unknown_field")


@functools.lru_cache(maxsize=4096)  # every request of a client sends the same few field names: difflib once each
def _near_miss(key: str) -> str | None:
    """``steering`` or ``vllm_xargs`` when ``key`` looks like a misspelling of it, else None."""
    k = key.lower().replace("-", "_")
    if "steer" in k or "emotion" in k or difflib.SequenceMatcher(None, k, "steering").ratio() >= 0.75:
        return "steering"
    if "xarg" in k or difflib.SequenceMatcher(None, k, "vllm_xargs").ratio() >= 0.75:
        return "vllm_xargs"
    return None


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """``"max_tokens: Input should be a valid integer"`` and the offending field, from pydantic errors."""
    parts, param = [], None
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        param = param or loc or None
        got = err.get("input")
        shown = f" (got a JSON {json_type(got)})" if err.get("type", "").endswith("_type") else ""
        parts.append(f"{loc}: {err.get('msg')}{shown}" if loc else str(err.get("msg")))
    return "invalid request: " + "; ".join(parts), param
