"""``SteeringMiddleware``: emolab's layer in front of vLLM's own OpenAI app (vLLM's ``--middleware``).

It adds the API key (deny by default), ``GET /v1/emotions``, the shared validation of every
generation request (``emolab.serve.schema``) with a clear 4xx before anything is scheduled, and
rewrites steering given by name into the canonical numeric form (ids) that the engine-side plugin
reads. Pure ASGI, so streaming responses pass through untouched.

Per request it parses the body once and validates it once (``emolab.serve.schema``); a body whose
steering is already numeric ids in ``vllm_xargs`` (what ``SteeringClient`` sends) goes on byte for byte,
not re-encoded. vLLM may run several API-server processes (``--api-server-count``): each builds its
own middleware from the same environment (``ServeSettings.from_env``), so every process answers the
same contract, and its counters live in shared memory (``emolab.fastpath.metrics``), so every
process's ``/metrics`` shows the sums over all of them.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emolab.core.bundle import EmotionBundle
from emolab.core.readout import readout_scale, summary_from_sums
from emolab.core.steering import MODES_FIELD, SCOPE_FIELD
from emolab.fastpath.metrics import (
    HTTP_REQUESTS,
    IN_FLIGHT,
    REFUSED,
    STEERED_IN_FLIGHT,
    STEERED_TOTAL,
    ApiServerCounters,
    FrontEndCounters,
    metrics_directory,
    read_api_server_counters,
    read_worker_counters,
    render_prometheus,
)
from emolab.fastpath.readout_response import ReadoutResponse
from emolab.fastpath.readout_store import READOUT_XARG, choice_key, collect, new_key, readout_folder, readout_xarg
from emolab.serve.contract import (
    APIError,
    BearerAuthMiddleware,
    emotions_payload,
    error_response,
    parse_json_body,
    resolve_api_key,
)
from emolab.serve.schema import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    GENERATION_SCHEMAS,
    READOUT_FIELD,
    STEERING_XARGS,
    RequestContract,
    response_readout,
    validate_generation,
)
from emolab.serve.settings import ServeSettings

__all__ = ["READOUT_WAIT_S", "SteeringMiddleware"]

READOUT_WAIT_S = 10.0  # how long a response waits for its readout after the engine finished it


class SteeringMiddleware:
    """Pure ASGI (streaming-safe) layer in front of vLLM's app; configured from the environment.

    Deny by default, twice: with a key set, every path but ``/health`` and ``/healthz`` needs it
    (``BearerAuthMiddleware``), and only ``SERVED_PATHS`` reach vLLM at all. vLLM mounts many more
    routes (SageMaker ``/invocations``, Anthropic ``/v1/messages``, batch, scoring, admin and
    tokenizer routes, ones a future vLLM adds); those do not pass through the steering contract, so
    they answer 404 here rather than run "accepted and unsteered".
    """

    UNCOUNTED_PATHS = frozenset({"/metrics", "/health", "/healthz"})  # scrapes and probes
    SERVED_PATHS = frozenset({
        "/health", "/v1/models", "/v1/emotions", CHAT_PATH, COMPLETIONS_PATH, "/metrics", "/version",
        "/tokenize", "/detokenize",
    })

    def __init__(self, app: ASGIApp) -> None:
        settings = ServeSettings.from_env()
        if settings is None:
            raise RuntimeError("emolab's SteeringMiddleware needs $EMOLAB_VECTORS (the bundle folder)")
        self.app = app
        self.bundle = EmotionBundle.load(settings.vectors, load_full_sweep=False)
        self.limits = settings.limits
        self.alpha_scale = self.bundle.resolve_alpha_scale(settings.alpha_scale)
        self.chat = settings.chat  # False: no chat template (a base model): chat requests get emolab's 400
        # The same key check as the HF backend, in front of everything below (and of vLLM's app).
        self.guarded = BearerAuthMiddleware(self.handle, resolve_api_key(None))
        # emolab serve passes the names; under plain `vllm serve` they are read from vLLM's app on the
        # first request (vLLM checks `model` itself meanwhile).
        self.served_names: tuple[str, ...] | None = settings.served_model_names or None
        self.contract = self._contract()
        # Shared memory under the metrics folder: every API-server process of this server reads them all.
        self.metrics_dir = metrics_directory()
        self.counters = ApiServerCounters(self.metrics_dir)
        self.readout_dir = readout_folder(self.metrics_dir) if self.metrics_dir else None
        self.readout_scale = readout_scale(self.bundle)
        self.readout_mask = self.bundle.steering_mask()

    def _contract(self) -> RequestContract:
        # vllm_xargs keys other than steering pass on (other vLLM plugins may read them).
        return RequestContract(tuple(self.bundle.steering_names), self.limits, self.served_names, xargs_keys=None,
                               chat=self.chat)

    def _learn_served_names(self, scope: Scope) -> None:
        from emolab.fastpath.adapters import app_served_model_names

        names = app_served_model_names(scope.get("app"))
        if names:
            self.served_names = names
            self.contract = self._contract()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)  # lifespan
            return
        path = scope["path"]
        if path not in self.UNCOUNTED_PATHS:
            self.counters.values[HTTP_REQUESTS] += 1
        elif path == "/healthz" and kind == "http":  # alias of vLLM's own /health, as in HF
            scope = {**scope, "path": "/health", "raw_path": b"/health"}
        await self.guarded(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.served_names is None:
            self._learn_served_names(scope)
        path = scope["path"]
        if path not in self.SERVED_PATHS:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": f"{path} is not served by emolab"})
                return
            await error_response(404, f"{path} is not served by emolab; its routes: {sorted(self.SERVED_PATHS)}",
                                 code="not_found")(scope, receive, send)
            return
        method = scope.get("method")
        if path == "/v1/emotions":
            if method != "GET":
                await error_response(405, f"{method} is not allowed on /v1/emotions; use GET")(scope, receive, send)
                return
            primary = self.served_names[0] if self.served_names else str(self.bundle.model or "")
            payload = emotions_payload(
                self.bundle, primary, alpha_scale=self.alpha_scale, backend="vllm", limits=self.limits
            )
            await JSONResponse(payload)(scope, receive, send)
            return
        if method == "GET" and path == "/metrics":
            await self.metrics(scope, receive, send)
            return
        if method == "POST" and path in GENERATION_SCHEMAS:
            raw, more = await _read_body(receive)
            try:
                new_raw, steered, readout = self._rewrite(raw, path)
            except APIError as exc:
                self.counters.values[REFUSED] += 1
                await exc.response()(scope, receive, send)
                return
            if new_raw is not raw:
                scope = _with_content_length(scope, len(new_raw))
            if readout is not None:
                if self.readout_dir is None:
                    await error_response(400, "this server has no metrics folder for readouts",
                                         param="readout")(scope, receive, send)
                    return
                send = ReadoutResponse(send, self.readout_for(readout)).send
            await self.generate(scope, _replay(new_raw, more, receive), send, steered)
            return
        await self.app(scope, receive, send)

    def readout_for(self, readout: tuple[str, str, int]):
        """The coroutine that waits for the workers' parts of one request's readout and returns its summary (a
        list of one per choice for n > 1)."""
        key, kind, choices = readout
        keys = [key] if choices == 1 else [choice_key(key, i) for i in range(choices)]

        async def wait() -> dict | list[dict]:
            deadline = time.monotonic() + READOUT_WAIT_S
            found: dict[int, dict] = {}
            while True:
                for i, choice in enumerate(keys):
                    if i not in found:
                        part = collect(self.readout_dir, choice, len(self.bundle.chosen_layers))
                        if part is not None:
                            found[i] = part
                late = len(found) < len(keys) and time.monotonic() > deadline
                if len(found) == len(keys) or late:
                    return response_readout(self._summaries([found.get(i) for i in range(len(keys))], kind))
                await asyncio.sleep(0.002)

        return wait

    def _summaries(self, parts: list[dict | None], kind: str) -> list[dict]:
        """Each choice's readout summary from its assembled part (None: it did not arrive in time). The choices of
        one request share its prompt, whose tokens the first of them to run read (the others may find them in
        the prefix cache): every choice's prompt score is that of the choice that read the most prompt tokens."""
        read = [part for part in parts if part is not None and not part.get("unavailable")]
        prompt = max(read, key=lambda part: part["prompt_count"], default=None)
        out = []
        for part in parts:
            if part is None:
                out.append({"error": f"the engine's readout did not arrive within {READOUT_WAIT_S:g} s (a worker on "
                                     "another host cannot hand one to this API server: docs/readout.md)"})
                continue
            if part.get("unavailable"):
                out.append({"error": part["unavailable"]})
                continue
            summary = summary_from_sums(
                list(self.bundle.emotions), self.readout_scale, self.readout_mask,
                prompt_sum=prompt["prompt_sum"], prompt_count=prompt["prompt_count"],
                generated_sum=part["generated_sum"], generated_count=part["generated_count"],
                per_token=part["per_token"] if kind == "per_token" else None)
            if kind == "per_token" and part["per_token"] is None:
                summary["generated_tokens"] = None
            if part.get("note"):
                summary["note"] = part["note"]
            out.append(summary)
        return out

    async def generate(self, scope: Scope, receive: Receive, send: Send, steered: bool) -> None:
        """Pass a validated generation request to vLLM, counting it while its response is open."""
        values = self.counters.values
        values[IN_FLIGHT] += 1
        if steered:
            values[STEERED_TOTAL] += 1
            values[STEERED_IN_FLIGHT] += 1
        try:
            await self.app(scope, receive, send)
        finally:  # also when the client went away mid-stream
            values[IN_FLIGHT] -= 1
            if steered:
                values[STEERED_IN_FLIGHT] -= 1

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        """vLLM's own ``/metrics`` with emolab's lines appended (every API server, summed; every worker)."""
        start: dict = {}
        chunks: list[bytes] = []

        async def collect(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, collect)
        own = self.counters.snapshot()
        workers, servers = [], [own]
        if self.metrics_dir:
            workers = read_worker_counters(self.metrics_dir)
            servers = read_api_server_counters(self.metrics_dir)
            if not any(server["pid"] == own["pid"] for server in servers):  # its file unreadable: its own values
                servers.append(own)
        body = b"".join(chunks)
        if start.get("status", 200) == 200:
            body += render_prometheus(FrontEndCounters.total(servers), workers, servers).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": start.get("status", 200), "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def rewrite(self, raw: bytes, path: str = CHAT_PATH) -> tuple[bytes, bool]:
        """Validate the request (the contract both backends share); the body vLLM should see (``raw``
        itself when nothing needs rewriting), and whether it is steered."""
        body, steering, _ = self._rewrite(raw, path)
        return body, steering

    def _rewrite(self, raw: bytes, path: str) -> tuple[bytes, bool, tuple[str, str, int] | None]:
        """``rewrite``, and the readout key, kind and choice count this request was given (None: it asked for
        none)."""
        body = parse_json_body(raw)
        validated = validate_generation(body, path, self.contract)
        steering = validated.steering
        own = ("steering", SCOPE_FIELD, MODES_FIELD, READOUT_FIELD)
        if not any(key in body for key in own) and not validated.readout:
            xargs = body.get("vllm_xargs") or {}
            if all(key == "steering" or key not in STEERING_XARGS for key in xargs) and (
                    "steering" not in xargs or _numeric(xargs["steering"])) and not steering.modes:
                # No control fields, steering absent or ids and alphas as numbers: the engine parses these as
                # validated here.
                return raw, bool(steering), None
        for key in own:
            body.pop(key, None)
        xargs = {k: v for k, v in (body.get("vllm_xargs") or {}).items() if k not in STEERING_XARGS}
        # The engine-side plugin derives the prefix-cache salt and the rows from these (emolab.fastpath.plugin).
        xargs.update(steering.engine_args())
        readout = None
        if validated.readout:
            readout = (new_key(), validated.readout, validated.request.n or 1)
            xargs[READOUT_XARG] = readout_xarg(*readout)
        if xargs:
            body["vllm_xargs"] = xargs
        else:
            body.pop("vllm_xargs", None)
        return json.dumps(body).encode(), bool(steering), readout


def _numeric(raw: object) -> bool:
    """A steering list of plain numbers (ids and alphas): the engine needs nothing rewritten."""
    return isinstance(raw, list) and all(type(x) is int or type(x) is float for x in raw)


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, connected: bool, original: Receive) -> Receive:
    """A ``receive`` that yields the (rewritten) body once, then waits for the client to leave."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if not connected:
            return {"type": "http.disconnect"}
        return await original()  # later messages (a disconnect) come from the real client

    return receive


def _with_content_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope.get("headers") or [] if k.lower() != b"content-length"]
    headers.append((b"content-length", str(length).encode()))
    return {**scope, "headers": headers}
