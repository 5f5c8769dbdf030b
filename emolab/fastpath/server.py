"""``emolab serve --backend vllm``: vLLM's own OpenAI server plus emolab's additions.

vLLM serves what emolab lets through (chat and text completions, streaming, ``/v1/models``,
metrics). emolab adds, through two public hooks: the ``vllm.general_plugins`` entry point
(``emolab.fastpath.plugin``), which steers inside the workers, and vLLM's ``--middleware`` option,
which puts ``emolab.fastpath.middleware.SteeringMiddleware`` in front of the app.

With ``api_server_count`` > 1 vLLM runs that many API-server processes on one port (the engine in
a process of its own); each inherits this environment, so every one builds the same middleware, keys
steering cache salts with the one ``$EMOLAB_SALT_SECRET`` drawn here, and publishes its counters in the
one ``$EMOLAB_METRICS_DIR``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emolab.core.bundle import EmotionBundle
from emolab.core.errors import EmolabError
from emolab.core.models import resolve_model
from emolab.core.names import served_model_names
from emolab.core.steering import SALT_SECRET_ENV, new_salt_secret
from emolab.fastpath.metrics import METRICS_DIR_ENV
from emolab.serve.settings import ServeSettings, check_bundle_model

__all__ = ["VLLMOptions", "VLLMServerError", "all_reduce_flags", "gguf_leftover", "run_vllm_server", "vllm_support"]

logger = logging.getLogger("emolab.vllm")


class VLLMServerError(EmolabError, RuntimeError):
    """The vLLM backend cannot serve this model or bundle here."""


@dataclass(frozen=True)
class VLLMOptions:
    """vLLM's own server options that ``emolab serve`` passes through."""

    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    api_server_count: int = 1  # vLLM API-server processes on the one port (the front end's ceiling)
    custom_all_reduce: str = "auto"  # auto | on | off (see all_reduce_flags)
    extra_args: tuple[str, ...] = field(default_factory=tuple)  # raw vLLM flags


def all_reduce_flags(options: VLLMOptions, on_cuda: bool) -> tuple[list[str], str | None]:
    """vLLM flags for tensor parallelism's all-reduce, and the log line that says why.

    On the lent H100/H200 hosts (Firecracker VMs) vLLM 0.26 with ``tensor_parallel_size=2`` dies in
    CUDA-graph capture with an illegal memory access (plugin loaded or not). vLLM's custom all-reduce
    and its fused all-reduce + RMSNorm pass both rely on CUDA IPC peer memory between the GPUs; with
    both off it uses NCCL, which works there. The same vLLM works on other hosts (vllm#52457 reports
    0.26.0 fine at TP=4 on Hopper), so ``auto`` turns them off only when tensor parallelism is on,
    says so, and ``on`` keeps vLLM's defaults for hosts where they work.
    """
    if options.tensor_parallel_size <= 1 or not on_cuda or options.custom_all_reduce == "on":
        return [], None
    if options.custom_all_reduce not in ("auto", "off"):
        raise VLLMServerError(f"custom all-reduce must be auto, on or off, got {options.custom_all_reduce!r}",
                              setting="custom_all_reduce")
    flags = ["--disable-custom-all-reduce", "--compilation-config", '{"pass_config": {"fuse_allreduce_rms": false}}']
    why = (f"tensor parallel {options.tensor_parallel_size}: vLLM's custom all-reduce and fused all-reduce+RMSNorm "
           "are off (they need CUDA IPC between GPUs and crash CUDA-graph capture on hosts without it); NCCL "
           "all-reduce instead. --custom-all-reduce on keeps vLLM's defaults")
    return flags, why


def gguf_leftover(config: Any) -> str | None:
    """What to do about a config that still says ``quantization_config: {quant_method: gguf}``, else None.

    transformers writes that entry when it loads a GGUF file (the weights it saves are plain, dequantized
    tensors); vLLM refuses such a config at start-up with a pydantic error deep in its log.
    """
    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if str(method or "").lower() != "gguf":
        return None
    return ("its config.json still carries quantization_config {quant_method: gguf} (written by transformers when "
            "it loaded a GGUF file), which vLLM refuses; the saved weights are plain tensors, so delete the "
            "quantization_config entry from config.json, or load the model, drop config.quantization_config and "
            "save it again with save_pretrained (for SmolLM2, `emolab build-model smollm2` builds a clean folder); "
            "the HF backend serves the folder as it is")


def vllm_support(model_path: str) -> tuple[bool, str]:
    """Whether the vLLM backend can serve this model here, and why (for ``--backend auto``)."""
    try:
        import vllm
    except ImportError:
        return False, "vLLM is not installed"
    from emolab.fastpath.adapters import UnsupportedVLLM, check_version

    try:
        check_version(vllm.__version__)
    except UnsupportedVLLM as exc:
        return False, str(exc)
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path)
        architectures = config.architectures or []
    except Exception as exc:  # unreadable config: let the HF backend produce the real error
        return False, f"cannot read the model config ({exc})"
    leftover = gguf_leftover(config)
    if leftover:
        return False, f"{model_path}: {leftover}"
    if not architectures:
        return False, "its config names no architecture (config.json has no `architectures`)"
    from emolab.fastpath.adapters.blocks import check_model

    # The same discovery the plugin runs when the weights load, on the model built without weights.
    ok, reason = check_model(model_path)
    if ok is False:
        return False, reason if architectures[0] in reason else f"{architectures[0]}: {reason}"
    if ok is None:
        return True, (f"vLLM {vllm.__version__}: {architectures[0]} not checked before start ({reason}); the "
                      "plugin checks its blocks when the weights load")
    return True, f"vLLM {vllm.__version__} with per-request steering: {reason}"


def run_vllm_server(settings: ServeSettings, *, model: str, host: str, port: int, api_key: str | None,
                    options: VLLMOptions = VLLMOptions(), warn: Callable[[str], None] | None = None) -> None:
    """Replace this process with vLLM's OpenAI server, configured for emolab.

    Everything that can be refused is refused here, before vLLM starts: an unsupported vLLM or
    model (a GGUF leftover in its config included), a bundle that does not fit the model, a bundle
    from another model under ``model_check == "strict"`` (under ``warn`` the mismatch goes to
    ``warn``, default this module's logger), an alpha scale the bundle cannot provide.
    """
    from emolab.fastpath.adapters import check_version, installed_version, is_cpu_platform, server_command

    check_version(installed_version())
    bundle = EmotionBundle.load(settings.vectors, load_full_sweep=False)  # fail here, not in a worker
    problem = check_bundle_model(bundle, model, settings.model_check)
    if problem:
        (warn or logger.warning)(problem)
    path = resolve_model(model)
    ok, reason = vllm_support(path)
    if not ok:
        raise VLLMServerError(f"the vLLM backend cannot serve this model: {reason}", setting="backend")
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(path).get_text_config()
    bundle.check_model(int(text.num_hidden_layers), int(text.hidden_size))  # refuse before vLLM starts
    alpha_scale = bundle.resolve_alpha_scale(settings.alpha_scale)
    bundle.steering_basis(alpha_scale)  # a scale the bundle cannot provide fails now
    names = settings.served_model_names or served_model_names(model)
    env = dict(os.environ)
    # model_check "off": checked above, so the plugin does not repeat the warning in vLLM's log.
    env.update(ServeSettings(**{**settings.__dict__, "vectors": str(Path(settings.vectors).resolve()),
                                "alpha_scale": alpha_scale, "backend": "vllm", "served_model_names": names,
                                "model_check": "off"}).to_env())
    env.pop("EMOLAB_API_KEY", None)
    if api_key:
        env["EMOLAB_API_KEY"] = api_key  # read by the middleware; kept off the command line
    # One key for the steering cache salts of every front-end process of this server (see steering_salt):
    # with several API servers, a steering's salt, hence its cached prefix blocks, is the same in each.
    env.setdefault(SALT_SECRET_ENV, new_salt_secret())
    if env.get("VLLM_PLUGINS") is not None and "emolab_steering" not in env["VLLM_PLUGINS"].split(","):
        raise VLLMServerError("VLLM_PLUGINS is set and excludes emolab_steering: steering would silently do nothing")
    extra = [token for item in options.extra_args for token in item.split()]
    # Several API servers, or an engine apart from them (--headless): only `vllm serve` starts those.
    headless = "--headless" in extra
    launcher = options.api_server_count > 1 or headless
    command = [
        *server_command(sys.executable, launcher),
        *(["--api-server-count", str(options.api_server_count)] if options.api_server_count > 1 else []),
        "--model", path,
        "--served-model-name", *names,  # vLLM checks each request's model against these itself
        "--host", host, "--port", str(port),
        "--dtype", options.dtype,
        "--middleware", "emolab.fastpath.middleware.SteeringMiddleware",
        "--gpu-memory-utilization", str(options.gpu_memory_utilization),
    ]
    if options.max_model_len:
        command += ["--max-model-len", str(options.max_model_len)]
    if options.max_num_seqs:
        command += ["--max-num-seqs", str(options.max_num_seqs)]
    if options.enforce_eager:
        command += ["--enforce-eager"]
    for flag, size in (("--tensor-parallel-size", options.tensor_parallel_size),
                       ("--pipeline-parallel-size", options.pipeline_parallel_size),
                       ("--data-parallel-size", options.data_parallel_size)):
        if size > 1:
            command += [flag, str(size)]
    all_reduce, why = all_reduce_flags(options, on_cuda=not is_cpu_platform())
    command += all_reduce
    if why:
        print(f"emolab serve: {why}", flush=True)
    # Workers publish their steering counters here; the middleware serves them on /metrics.
    env.setdefault(METRICS_DIR_ENV, tempfile.mkdtemp(prefix="emolab-metrics-"))
    command += extra
    if is_cpu_platform() and "VLLM_CPU_KVCACHE_SPACE" not in env:
        env["VLLM_CPU_KVCACHE_SPACE"] = "2"  # GiB; vLLM-CPU otherwise claims most of the RAM
    print(
        f"emolab serve: vLLM backend ({reason}), bundle {settings.vectors} ({len(bundle.emotions)} emotions, "
        f"layers {bundle.chosen_layers}), alpha scale {alpha_scale}, auth {'on' if api_key else 'off'}, "
        f"model names {', '.join(names)}, "
        f"{f'{options.api_server_count} API-server processes, ' if options.api_server_count > 1 else ''}"
        f"{'headless: engines only, no HTTP (requests come through the head node)' if headless else f'http://{host}:{port}/v1'}",
        flush=True,
    )
    os.execvpe(command[0], command, env)
