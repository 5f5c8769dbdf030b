"""``emolab serve``: an OpenAI-compatible server with per-request emotion steering.

This module is the command line and process handling only (kept import-light so ``emolab --help``
stays fast). The HF backend's app is ``emolab.hf_app`` over ``emolab.hf_backend``; the vLLM backend
is ``emolab.vllm_server``; both share the request contract of ``emolab.api``. ``launch_server`` and
``wait_for_health`` start and await a server process (tests, ``make serve``, notebooks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emolab.bundle import ALPHA_SCALES
from emolab.steering import DEFAULT_MAX_ALPHA, DEFAULT_MAX_PAIRS

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


# ------------------------------------------------------------------------------------------ CLI
def add_serve(sub: argparse._SubParsersAction) -> None:
    from emolab.cli import positive_int

    p = sub.add_parser("serve", help="serve an OpenAI-compatible API with per-request emotion steering")
    p.add_argument("--vectors", required=True, help="bundle folder (from emolab extract)")
    p.add_argument("--model", required=True, help="hub id, local folder, or smollm2 / tiny-qwen3 / tiny-llama")
    p.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto",
                   help="auto: vLLM when it can run this model here, else Hugging Face transformers")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=positive_int("--port"), default=8000)
    p.add_argument("--api-key", default=None, help="bearer key for /v1/* (else $EMOLAB_API_KEY / $EMOTION_STEERING_API_KEY)")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    p.add_argument("--device", default="auto", help="HF backend: torch device (auto = cuda if present)")
    p.add_argument("--max-model-len", type=positive_int("--max-model-len"), default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM backend only")
    p.add_argument("--max-num-seqs", type=positive_int("--max-num-seqs"), default=None, help="vLLM backend only")
    p.add_argument("--served-model-name", default=None, help="name clients put in 'model' (default: --model)")
    p.add_argument("--max-alpha", type=float, default=DEFAULT_MAX_ALPHA, help="largest |alpha| a request may use")
    p.add_argument("--max-pairs", type=positive_int("--max-pairs"), default=DEFAULT_MAX_PAIRS,
                   help="most (emotion, alpha) pairs per request")
    p.add_argument("--alpha-scale", choices=list(ALPHA_SCALES), default=None,
                   help="raw: alpha multiplies the vectors as extracted; normalized: alpha 1 = a tenth of the "
                        "layer's residual norm (default: the bundle's own scale, else raw)")
    p.add_argument("--max-concurrent-queue", type=positive_int("--max-concurrent-queue"), default=64,
                   help="HF backend: requests queued or running before new ones get 429")
    p.add_argument("--enforce-eager", action="store_true", help="vLLM backend: no torch.compile / CUDA graphs")
    p.add_argument("--vllm-arg", action="append", default=[], metavar="ARGS",
                   help="vLLM backend: extra arguments for vLLM's server, e.g. --vllm-arg='--max-num-batched-tokens 256'")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import math

    from emolab.cli import UsageError

    if not (math.isfinite(args.max_alpha) and args.max_alpha > 0):
        raise UsageError(f"--max-alpha must be a positive number, got {args.max_alpha}")
    if not 0.0 < args.gpu_memory_utilization <= 1.0:
        raise UsageError(f"--gpu-memory-utilization must be in (0, 1], got {args.gpu_memory_utilization}")
    from emolab.api import resolve_api_key

    args.api_key = resolve_api_key(args.api_key)
    args.served_model_name = args.served_model_name or args.model
    if args.host not in LOOPBACK_HOSTS and not args.api_key:
        bar = "!" * 78
        print(f"{bar}\nWARNING: binding {args.host} WITHOUT an API key: anyone who can reach this port can use the "
              f"model.\nSet --api-key or $EMOLAB_API_KEY.\n{bar}", file=sys.stderr, flush=True)
    backend = pick_backend(args)
    if backend == "vllm":
        from emolab.vllm_server import run_vllm_server

        return int(run_vllm_server(args) or 0)
    return run_hf_server(args)


def pick_backend(args: argparse.Namespace) -> str:
    if args.backend != "auto":
        return args.backend
    try:
        from emolab.models import resolve_model
        from emolab.vllm_server import vllm_support

        ok, reason = vllm_support(resolve_model(args.model))
    except ImportError as exc:
        ok, reason = False, f"vLLM backend unavailable ({exc})"
    choice = "vllm" if ok else "hf"
    print(f"emolab serve: backend auto -> {choice}: {reason}", flush=True)
    return choice


def run_hf_server(args: argparse.Namespace) -> int:
    import uvicorn

    from emolab.bundle import EmotionBundle
    from emolab.hf_app import create_app
    from emolab.hf_backend import HFBackend
    from emolab.steering import SteeringLimits

    bundle = EmotionBundle.load(args.vectors, load_full_sweep=False)
    limits = SteeringLimits(max_alpha=args.max_alpha, max_pairs=args.max_pairs)
    if args.gpu_memory_utilization != 0.9 or args.max_num_seqs is not None:
        print("emolab serve: --gpu-memory-utilization / --max-num-seqs only apply to the vLLM backend", flush=True)
    alpha_scale = args.alpha_scale or getattr(bundle, "alpha_scale", "raw")
    backend = HFBackend.load(args.model, bundle, dtype=args.dtype, device=args.device, alpha_scale=alpha_scale,
                             max_model_len=args.max_model_len, max_queue=args.max_concurrent_queue)
    app = create_app(backend, bundle, served_model_name=args.served_model_name, api_key=args.api_key,
                     limits=limits, alpha_scale=alpha_scale)
    print(f"emolab serve: HF backend, model {args.served_model_name} ({backend.model.dtype}, {backend.device}), "
          f"bundle {args.vectors} ({len(bundle.emotions)} emotions, layers {bundle.chosen_layers}), "
          f"alpha scale {alpha_scale}, auth {'on' if args.api_key else 'off'}, http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


# ---------------------------------------------------------------------------------- processes
def launch_server(*, vectors: str | Path, model: str, port: int, host: str = "127.0.0.1", backend: str = "hf",
                  api_key: str | None = None, extra_args: Sequence[str] = (), env: dict[str, str] | None = None,
                  log_path: str | Path | None = None) -> subprocess.Popen:
    """Start ``python -m emolab.cli serve ...`` in the background; its output goes to ``proc.log_path``.

    The key travels in ``$EMOLAB_API_KEY`` (not argv, which other users can read in ``ps``).
    """
    child_env = dict(os.environ if env is None else env)
    child_env.pop("EMOLAB_API_KEY", None)
    child_env.pop("EMOTION_STEERING_API_KEY", None)
    if api_key:
        child_env["EMOLAB_API_KEY"] = api_key
    if log_path is None:
        handle, log_path = tempfile.mkstemp(prefix=f"emolab-serve-{port}-", suffix=".log")
        os.close(handle)
    log_path = Path(log_path)
    cmd = [sys.executable, "-m", "emolab.cli", "serve", "--vectors", str(vectors), "--model", model,
           "--host", host, "--port", str(port), "--backend", backend, *extra_args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True)
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def wait_for_health(base_url: str, timeout: float = 300.0, process: subprocess.Popen | None = None) -> dict[str, Any]:
    """Poll ``/health`` until it answers 200; raise with the log's tail if the process dies or time runs out."""
    url = base_url.rstrip("/").removesuffix("/v1") + "/health"
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before {url} answered\n{log_tail(process)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    body = response.read()  # vLLM's /health answers 200 with an empty body
                    return json.loads(body) if body.strip() else {"status": "ok"}
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f}s\n{log_tail(process)}")
        time.sleep(0.5)


def log_tail(process: subprocess.Popen | None, lines: int = 40) -> str:
    path = getattr(process, "log_path", None)
    if path is None or not Path(path).is_file():
        return "(no log)"
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def stop_server(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate a server started by ``launch_server`` (kill if it does not exit in time)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
