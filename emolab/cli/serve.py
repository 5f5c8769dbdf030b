"""``emolab serve``: an OpenAI-compatible server with per-request emotion steering (HF or vLLM backend)."""

from __future__ import annotations

import argparse
import sys

from emolab.cli.common import UsageError, positive_int
from emolab.core.bundle import ALPHA_SCALES
from emolab.core.steering import DEFAULT_MAX_ALPHA, DEFAULT_MAX_PAIRS
from emolab.serve.settings import DEFAULT_HF_MAX_BATCH, DEFAULT_HF_MAX_BATCH_TOKENS

__all__ = ["add_serve", "pick_backend"]


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve an OpenAI-compatible API with per-request emotion steering")
    p.add_argument("-v", "--vectors", required=True, help="bundle folder (from emolab extract)")
    p.add_argument("-m", "--model", required=True, help="hub id, local folder, or smollm2 / gemma3-270m / tiny-qwen3 / tiny-llama")
    p.add_argument("-b", "--backend", choices=["auto", "hf", "vllm"], default="auto",
                   help="auto: vLLM when it can run this model here, else Hugging Face transformers")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=positive_int("--port"), default=8000)
    p.add_argument("--api-key", default=None,
                   help="bearer key for every route but /health (else $EMOLAB_API_KEY / $EMOTION_STEERING_API_KEY)")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    p.add_argument("--device", default="auto", help="HF backend: torch device (auto = cuda if present)")
    p.add_argument("--max-model-len", type=positive_int("--max-model-len"), default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM backend only")
    p.add_argument("--max-num-seqs", type=positive_int("--max-num-seqs"), default=None, help="vLLM backend only")
    p.add_argument("--served-model-name", nargs="+", action="extend", default=None, metavar="NAME",
                   help="more names clients may put in 'model' (the first becomes the primary name); the server "
                        "always answers to --model and its short lower-cased name (Qwen/Qwen3-8B -> qwen3-8b)")
    p.add_argument("--strict-model", action="store_true",
                   help="refuse to start when the bundle was extracted from another model (default: a warning)")
    p.add_argument("--max-alpha", type=float, default=DEFAULT_MAX_ALPHA, help="largest |alpha| a request may use")
    p.add_argument("--max-pairs", type=positive_int("--max-pairs"), default=DEFAULT_MAX_PAIRS,
                   help="most (emotion, alpha) pairs per request")
    p.add_argument("--alpha-scale", choices=list(ALPHA_SCALES), default=None,
                   help="raw: alpha multiplies the vectors as extracted; normalized: alpha 1 = a tenth of the "
                        "layer's residual norm (default: the bundle's own scale, else raw)")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="a Jinja chat template replacing the model's own; a model without one (a base model such as "
                        "gemma3-270m) answers chat requests only with it, else 400: use /v1/completions")
    p.add_argument("--max-concurrent-queue", type=positive_int("--max-concurrent-queue"), default=64,
                   help="HF backend: requests queued or running before new ones get 429")
    p.add_argument("--hf-max-batch", type=positive_int("--hf-max-batch"), default=DEFAULT_HF_MAX_BATCH, metavar="N",
                   help="HF backend: at most N requests generate together, joining and leaving the batch between "
                        "steps (continuous batching); 1 runs them one at a time through model.generate")
    p.add_argument("--hf-max-batch-tokens", type=positive_int("--hf-max-batch-tokens"),
                   default=DEFAULT_HF_MAX_BATCH_TOKENS, metavar="T",
                   help="HF backend: key/value positions the batch may hold, counted as rows x the longest row's "
                        "prompt + max_tokens; a request that does not fit waits (alone, any request fits)")
    p.add_argument("--load-format", choices=["auto", "dummy"], default="auto",
                   help="dummy: random weights of the model's shape, for benchmarks (HF backend: built from the "
                        "config on the device; vLLM backend: vLLM's own --load-format dummy)")
    p.add_argument("--enforce-eager", action="store_true", help="vLLM backend: no torch.compile / CUDA graphs")
    for name, what in (("tensor", "split each layer over N GPUs"), ("pipeline", "split the layers over N GPUs"),
                       ("data", "N engine replicas behind one server")):
        p.add_argument(f"--{name}-parallel-size", type=positive_int(f"--{name}-parallel-size"), default=1,
                       help=f"vLLM backend: {what}")
    p.add_argument("--api-server-count", type=positive_int("--api-server-count"), default=1, metavar="N",
                   help="vLLM backend: N API-server processes on the one port (auth, validation, steering salts and "
                        "/metrics work the same in each); when one front-end process is the ceiling (docs/scale-out.md)")
    p.add_argument("--custom-all-reduce", choices=["auto", "on", "off"], default="auto",
                   help="vLLM backend, tensor parallel: auto turns vLLM's custom and fused all-reduce off (they "
                        "crash CUDA-graph capture on hosts without CUDA IPC between GPUs) and says so; on keeps them")
    p.add_argument("--vllm-arg", action="append", default=[], metavar="ARGS",
                   help="vLLM backend: extra arguments for vLLM's server, e.g. --vllm-arg='--max-num-batched-tokens 256'")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from emolab.core.names import served_model_names
    from emolab.serve.contract import resolve_api_key
    from emolab.serve.launch import LOOPBACK_HOSTS
    from emolab.serve.settings import ServeSettings, SettingsError

    prog = getattr(args, "prog", "emolab")
    args.flags = {"model_check": "--strict-model"}

    if not 0.0 < args.gpu_memory_utilization <= 1.0:
        raise UsageError(f"--gpu-memory-utilization must be in (0, 1], got {args.gpu_memory_utilization}")
    parallel = {flag: value for flag, value in (("--tensor-parallel-size", args.tensor_parallel_size),
                                                ("--pipeline-parallel-size", args.pipeline_parallel_size),
                                                ("--data-parallel-size", args.data_parallel_size)) if value > 1}
    api_key = resolve_api_key(args.api_key)
    chat_template = check_chat_template(args.chat_template)
    settings = ServeSettings(
        vectors=args.vectors, alpha_scale=args.alpha_scale, max_alpha=args.max_alpha, max_pairs=args.max_pairs,
        served_model_names=served_model_names(args.model, args.served_model_name or ()),
        model_check="strict" if args.strict_model else "warn", hf_max_batch=args.hf_max_batch,
        hf_max_batch_tokens=args.hf_max_batch_tokens, chat_template=chat_template,
    )

    def warn(problem: str) -> None:
        print(f"{prog} serve: warning: {problem}; --strict-model refuses such a pair", file=sys.stderr, flush=True)

    if args.host not in LOOPBACK_HOSTS and not api_key:
        bar = "!" * 78
        print(f"{bar}\nWARNING: binding {args.host} WITHOUT an API key: anyone who can reach this port can use the "
              f"model.\nSet --api-key or $EMOLAB_API_KEY.\n{bar}", file=sys.stderr, flush=True)
    if args.strict_model:  # refuse a bundle of another model before anything is built or picked
        from emolab.core.bundle import EmotionBundle
        from emolab.serve.settings import check_bundle_model

        check_bundle_model(EmotionBundle.load(args.vectors, load_full_sweep=False), args.model, "strict")
    backend = pick_backend(args.backend, args.model, prog)
    if backend == "hf" and parallel:
        raise UsageError(f"{', '.join(parallel)}: the HF backend runs on one device; parallelism needs --backend vllm")
    if backend == "hf" and args.api_server_count > 1:  # one line: "emolab serve: error: --api-server-count: ..."
        raise SettingsError("the HF backend is one process (one model, one worker thread); several API-server "
                            "processes need the vLLM backend", setting="api_server_count")
    if backend == "vllm":
        from dataclasses import replace

        from emolab.core.models import has_chat_template, resolve_model
        from emolab.fastpath.server import VLLMOptions, run_vllm_server

        template_args = ("--chat-template", chat_template) if chat_template else ()
        if not (chat_template or any("--chat-template" in a for a in args.vllm_arg)):
            # A model without a chat template (a base model): emolab's middleware answers chat requests
            # with a 400 that says what to do instead of vLLM's own error.
            settings = replace(settings, chat=has_chat_template(resolve_model(args.model)))

        options = VLLMOptions(dtype=args.dtype, max_model_len=args.max_model_len,
                              gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=args.max_num_seqs,
                              enforce_eager=args.enforce_eager, tensor_parallel_size=args.tensor_parallel_size,
                              pipeline_parallel_size=args.pipeline_parallel_size,
                              data_parallel_size=args.data_parallel_size, api_server_count=args.api_server_count,
                              custom_all_reduce=args.custom_all_reduce,
                              extra_args=(*args.vllm_arg, *template_args,
                                          *(("--load-format dummy",) if args.load_format == "dummy" else ())))
        run_vllm_server(settings, model=args.model, host=args.host, port=args.port, api_key=api_key, options=options,
                        warn=warn)
        return 0
    from emolab.serve.hf_server import run_hf_server

    if args.gpu_memory_utilization != 0.9 or args.max_num_seqs is not None:
        print(f"{prog} serve: --gpu-memory-utilization / --max-num-seqs only apply to the vLLM backend", flush=True)
    run_hf_server(settings, model=args.model, host=args.host, port=args.port, api_key=api_key, dtype=args.dtype,
                  device=args.device, max_model_len=args.max_model_len, max_queue=args.max_concurrent_queue,
                  load_format=args.load_format,
                  log_level=args.log_level, warn=warn)
    return 0


def check_chat_template(path: str | None) -> str | None:
    """The absolute path of a readable ``--chat-template`` file (None when not given)."""
    if path is None:
        return None
    from pathlib import Path

    file = Path(path).resolve()
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--chat-template: cannot read {path}: {exc}") from None
    if not text.strip():
        raise UsageError(f"--chat-template: {path} is empty")
    if any(c.isspace() for c in str(file)):
        raise UsageError(f"--chat-template: {file} has white space in its path, which vLLM's flags cannot carry")
    return str(file)


def pick_backend(requested: str, model: str, prog: str = "emolab") -> str:
    """``hf`` or ``vllm``; ``auto`` picks vLLM when it can run the model here, and says why."""
    if requested != "auto":
        return requested
    try:
        from emolab.core.models import resolve_model
        from emolab.fastpath.server import vllm_support

        ok, reason = vllm_support(resolve_model(model))
    except ImportError as exc:
        ok, reason = False, f"vLLM backend unavailable ({exc})"
    choice = "vllm" if ok else "hf"
    why = reason if ok else f"falls back to the HF backend, since the vLLM fast path cannot serve it: {reason}"
    print(f"{prog} serve: backend auto -> {choice}: {why}", flush=True)
    return choice
