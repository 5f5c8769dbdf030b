"""``SteeringClient``: talk to a steering server the way an agent simulation does.

One client for every consumer (``emolab bench``, ``emolab eval --server``, ``emolab test-http``,
the notebook widgets, users' own simulations): the ``openai`` client for the OpenAI routes plus
``GET /v1/emotions``, and steering given by emotion name or id::

    client = SteeringClient("http://127.0.0.1:8000", api_key=KEY)
    client.chat("How was your day?", steering={"fear": 1.0, "joy": -0.5}, max_tokens=40)
    client.chat("How was your day?", steering={"fear": 0.5}, modes={"fear": "clamp"}, scope="generated")
    reply = client.chat("How was your day?", steering={"joy": 1.0}, readout=True)
    reply.readout["generated"]["joy"]   # the reply is a str; .readout is the server's emotion_readout

Works against either emolab backend, and against the reference tool's server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from functools import cached_property
from typing import Any

from emolab.core.steering import Steering, SteeringLimits, parse_modes, parse_scope
from emolab.serve.contract import resolve_api_key
from emolab.serve.schema import READOUT_RESPONSE

__all__ = ["DEFAULT_BASE_URL", "AsyncSteeringClient", "Reply", "SteeringClient", "SteeringSpec", "readout_of", "replies_of",
           "v1_url"]

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
# A steering as callers give it: {"fear": 1.0}, a Steering, the flat request list, or None (unsteered).
SteeringSpec = Mapping[str | int, float] | Steering | Sequence[Any] | None
# The client checks names and shape; the bounds on alphas and pairs are the server's to enforce.
_CLIENT_LIMITS = SteeringLimits(max_alpha=float("inf"), max_pairs=1 << 20)


class Reply(str):
    """A reply's text (a ``str``), with the server's emotion readout when one was asked for (else None)."""

    readout: dict[str, Any] | None

    def __new__(cls, text: str, readout: dict[str, Any] | None = None) -> Reply:
        reply = super().__new__(cls, text)
        reply.readout = readout
        return reply


def readout_of(response: Any) -> dict[str, Any] | list[dict[str, Any]] | None:
    """The ``emotion_readout`` of an openai response object or stream chunk (None when it has none; a list, one
    per choice, for a request with n > 1)."""
    extra = getattr(response, "model_extra", None) or {}
    return extra.get(READOUT_RESPONSE)


def replies_of(response: Any) -> list[Reply]:
    """Every choice of an openai chat or text completion as a ``Reply``, each with its own readout."""
    readout = readout_of(response)
    readouts = readout if isinstance(readout, list) else [readout] * len(response.choices)
    texts = [(c.message.content if hasattr(c, "message") else c.text) or "" for c in response.choices]
    return [Reply(text, found) for text, found in zip(texts, readouts, strict=True)]


def _one(kwargs: Mapping[str, Any]) -> None:
    if (kwargs.get("n") or 1) != 1:
        raise ValueError("chat and complete return one reply; ask choices(..., n=...) for several")


def v1_url(base_url: str) -> str:
    """Accept ``http://host:port`` or ``http://host:port/v1``; return the ``/v1`` form."""
    url = base_url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class _Common:
    """What the sync and async clients share: settings, the emotion list, request bodies."""

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0, max_retries: int = 0) -> None:
        self.base_url = v1_url(base_url)
        self.api_key = api_key if api_key is not None else resolve_api_key(None)
        self.timeout = timeout
        self.max_retries = max_retries
        self._model = model

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def steering_value(self, steering: SteeringSpec, emotions: Sequence[str], modes: Mapping[str | int, str] | None = None,
                       scope: str | None = None) -> Steering | None:
        """``steering`` (with ``modes`` per emotion and a ``scope``) as a ``Steering`` checked against the server's
        emotions; None when it steers nothing."""
        if steering is None:
            value = Steering()
        elif isinstance(steering, Steering):
            value = steering
        elif isinstance(steering, Mapping) and modes:  # with modes a 0 may be a clamp's level: keep it
            value = Steering.parse([x for k, a in steering.items() for x in (k, a)], emotions, _CLIENT_LIMITS,
                                   param="steering")
        elif isinstance(steering, Mapping):
            value = Steering.from_mapping(steering, emotions, _CLIENT_LIMITS)
        else:
            value = Steering.parse(list(steering), emotions, _CLIENT_LIMITS, param="steering")
        if modes or scope:
            value = Steering(value.pairs, parse_modes(dict(modes), emotions) if modes else value.modes,
                             parse_scope(scope) if scope else value.scope)
            value.plan(len(emotions))  # a clamp without its level, an ablate with an alpha: refused here
        return value if value else None

    def steering_list(self, steering: SteeringSpec, emotions: Sequence[str]) -> list[Any] | None:
        """The flat request list ``[id, alpha, ...]`` for ``steering``, checked against the server's emotions (None: unsteered)."""
        value = self.steering_value(steering, emotions)
        return value.as_request() if value else None  # ids: what every server, the reference tool's too, takes

    def _extra_body(self, steering: Steering | None, extra_body: Mapping[str, Any] | None,
                    readout: bool | str = False) -> dict[str, Any]:
        body = dict(extra_body or {})
        if steering is not None:
            xargs = dict(body.get("vllm_xargs") or {})
            xargs["steering"] = steering.as_request()  # ids: what every server, the reference tool's too, takes
            xargs.update(steering.controls())
            body["vllm_xargs"] = xargs
        if readout:
            body["readout"] = readout
        return body

    @staticmethod
    def _messages(messages: str | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(messages, str):
            return [{"role": "user", "content": messages}]
        return [dict(m) for m in messages]

    @staticmethod
    def _recommended(info: Mapping[str, Any]) -> dict[str, float]:
        recommended = dict(info.get("alpha_recommendations") or {})
        if info.get("alpha_recommendations_scale", "raw") != info.get("alpha_scale", "raw"):
            return {}  # recommendations in other units than the server's alphas would mislead
        return {e: float(a) for e, a in recommended.items() if a is not None}


class SteeringClient(_Common):
    """Synchronous client. ``.openai`` is the underlying ``openai.OpenAI`` for anything else."""

    @cached_property
    def openai(self) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=self.api_key or "EMPTY", timeout=self.timeout,
                      max_retries=self.max_retries)

    @cached_property
    def info(self) -> dict[str, Any]:
        """``GET /v1/emotions``: emotions, ids, layers, alpha scale, limits, recommendations."""
        import httpx

        response = httpx.get(self.base_url + "/emotions", headers=self._headers(), timeout=self.timeout)
        if response.status_code != 200:
            raise RuntimeError(f"GET /v1/emotions answered {response.status_code}: {response.text[:500]}")
        return response.json()

    @property
    def emotions(self) -> list[str]:
        return list(self.info["emotions"])

    @property
    def steerable(self) -> list[str]:
        """What may be steered by name: the emotions, then derived directions (valence, arousal) if served."""
        return list(self.info.get("steerable") or self.info["emotions"])

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self.info.get("model") or self.openai.models.list().data[0].id
        return self._model

    def recommended_alphas(self) -> dict[str, float]:
        """The bundle's recommended alpha per emotion, when it is on the server's alpha scale."""
        return self._recommended(self.info)

    def _steering(self, steering: SteeringSpec, modes: Mapping[str | int, str] | None = None,
                  scope: str | None = None) -> Steering | None:
        # /v1/emotions is read only for a steered request: a plain vLLM server has no such route.
        if steering is None and not modes and not scope:
            return None
        return self.steering_value(steering, self.steerable, modes, scope)

    def chat_completion(self, messages: str | Sequence[Mapping[str, Any]], steering: SteeringSpec = None, *,
                        extra_body: Mapping[str, Any] | None = None, modes: Mapping[str | int, str] | None = None,
                        scope: str | None = None, readout: bool | str = False, **kwargs: Any) -> Any:
        """The whole ``ChatCompletion`` (or the stream, with ``stream=True``); ``readout_of`` reads its readout."""
        body = self._extra_body(self._steering(steering, modes, scope), extra_body, readout)
        return self.openai.chat.completions.create(model=self.model, messages=self._messages(messages),
                                                   extra_body=body or None, **kwargs)

    def chat(self, messages: str | Sequence[Mapping[str, Any]], steering: SteeringSpec = None, **kwargs: Any) -> Reply:
        """The reply's text (a ``Reply``: a ``str`` with ``.readout`` when ``readout=True`` or ``"per_token"``)."""
        _one(kwargs)
        return replies_of(self.chat_completion(messages, steering, **kwargs))[0]

    def choices(self, messages: str | Sequence[Mapping[str, Any]], steering: SteeringSpec = None, *, n: int,
                **kwargs: Any) -> list[Reply]:
        """``n`` replies to one chat, sampled in one request (a ``seed`` gives choice i seed + i), each a ``Reply``
        with its own readout when one is asked for."""
        return replies_of(self.chat_completion(messages, steering, n=n, **kwargs))

    def complete(self, prompt: str, steering: SteeringSpec = None, *, extra_body: Mapping[str, Any] | None = None,
                 modes: Mapping[str | int, str] | None = None, scope: str | None = None, readout: bool | str = False,
                 **kwargs: Any) -> Reply:
        _one(kwargs)
        body = self._extra_body(self._steering(steering, modes, scope), extra_body, readout)
        response = self.openai.completions.create(model=self.model, prompt=prompt, extra_body=body or None, **kwargs)
        return replies_of(response)[0]

    def close(self) -> None:
        if "openai" in self.__dict__:
            self.openai.close()


class AsyncSteeringClient(_Common):
    """Asynchronous client for many concurrent agents (``emolab bench``, ``emolab test-http``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._info: dict[str, Any] | None = None

    @cached_property
    def openai(self) -> Any:
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.base_url, api_key=self.api_key or "EMPTY", timeout=self.timeout,
                           max_retries=self.max_retries)

    async def info(self) -> dict[str, Any]:
        if self._info is None:
            import httpx

            async with httpx.AsyncClient(timeout=self.timeout) as http:
                response = await http.get(self.base_url + "/emotions", headers=self._headers())
            if response.status_code != 200:
                raise RuntimeError(f"GET /v1/emotions answered {response.status_code}: {response.text[:500]}")
            self._info = response.json()
        return self._info

    async def emotions(self) -> list[str]:
        return list((await self.info())["emotions"])

    async def steerable(self) -> list[str]:
        info = await self.info()
        return list(info.get("steerable") or info["emotions"])

    async def model(self) -> str:
        if self._model is None:
            self._model = (await self.info()).get("model") or (await self.openai.models.list()).data[0].id
        return self._model

    async def recommended_alphas(self) -> dict[str, float]:
        return self._recommended(await self.info())

    async def chat_completion(self, messages: str | Sequence[Mapping[str, Any]], steering: SteeringSpec = None, *,
                              extra_body: Mapping[str, Any] | None = None, modes: Mapping[str | int, str] | None = None,
                              scope: str | None = None, readout: bool | str = False, **kwargs: Any) -> Any:
        value = None
        if steering is not None or modes or scope:
            value = self.steering_value(steering, await self.steerable(), modes, scope)
        body = self._extra_body(value, extra_body, readout)
        return await self.openai.chat.completions.create(model=await self.model(), messages=self._messages(messages),
                                                         extra_body=body or None, **kwargs)

    async def chat(self, messages: str | Sequence[Mapping[str, Any]], steering: SteeringSpec = None,
                   **kwargs: Any) -> Reply:
        _one(kwargs)
        return replies_of(await self.chat_completion(messages, steering, **kwargs))[0]

    async def choices(self, messages: str | Sequence[Mapping[str, Any]], steering: SteeringSpec = None, *, n: int,
                      **kwargs: Any) -> list[Reply]:
        """``n`` replies to one chat in one request, each a ``Reply`` with its own readout (as ``SteeringClient``)."""
        return replies_of(await self.chat_completion(messages, steering, n=n, **kwargs))

    async def stream_chat(self, messages: str | Sequence[Mapping[str, Any]], steering: SteeringSpec = None,
                          **kwargs: Any) -> AsyncIterator[Any]:
        """The chunks of a streamed chat completion (usage included in the last one)."""
        stream = await self.chat_completion(messages, steering, stream=True,
                                            stream_options={"include_usage": True}, **kwargs)
        try:
            async for chunk in stream:
                yield chunk
        finally:  # a caller that stops early closes the connection: the server sees the client leave
            await stream.close()

    async def close(self) -> None:
        if "openai" in self.__dict__:
            await self.openai.close()
