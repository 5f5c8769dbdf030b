"""The servers ``emolab bench`` starts itself: emolab (either backend), plain vLLM, emolab eager."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from emolab.bench.config import BenchConfig
from emolab.serve.launch import launch_server, wait_for_health

__all__ = ["LABELS", "start_bench_server"]

# label -> what it is: the ratios in the tables are taken between these, measured in one run.
LABELS = {
    "emolab": "emolab serve (the plugin on)",
    "plain-vllm": "vLLM's own server with the plugin not loaded (VLLM_PLUGINS='')",
    "emolab-eager": "emolab serve with --enforce-eager (no torch.compile, no CUDA graphs)",
}


def start_bench_server(config: BenchConfig, label: str, port: int, log_dir: Path) -> tuple[subprocess.Popen, float]:
    """Start the ``label`` server and time it until ``/health`` answers: (process, seconds). A server that does
    not answer in ``config.startup_timeout`` (or dies) is stopped, with its whole session, before the error."""
    begin = time.perf_counter()
    log_path = log_dir / f"{label}.log"
    if label == "plain-vllm":
        from emolab.core.models import resolve_model
        from emolab.fastpath.adapters import server_command

        # The same front end as emolab's: several API servers need `vllm serve` itself (the launcher).
        several = config.api_server_count > 1
        cmd = [*server_command(sys.executable, launcher=several),
               *(["--api-server-count", str(config.api_server_count)] if several else []),
               "--model", resolve_model(config.serve_model or ""), "--port", str(port),
               "--host", "127.0.0.1", "--dtype", config.dtype, "--served-model-name", config.model,
               *config.server_args_plain]
        if config.max_model_len:
            cmd += ["--max-model-len", str(config.max_model_len)]
        env = {**os.environ, "VLLM_PLUGINS": ""}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        proc.log_path = log_path  # type: ignore[attr-defined]
    else:
        extra = ["--dtype", config.dtype, "--served-model-name", config.model, *config.server_args]
        if config.api_server_count > 1:
            extra += ["--api-server-count", str(config.api_server_count)]
        if config.max_model_len:
            extra += ["--max-model-len", str(config.max_model_len)]
        if label == "emolab-eager":
            extra.append("--enforce-eager")
        proc = launch_server(vectors=config.serve_vectors or "", model=config.serve_model or "", port=port,
                             backend=config.serve_backend, api_key=config.api_key or None, extra_args=extra,
                             log_path=log_path)
    # a server that never came up (or an interrupt) must not outlive the bench
    wait_for_health(f"http://127.0.0.1:{port}", timeout=config.startup_timeout, process=proc, stop_on_failure=True)
    return proc, time.perf_counter() - begin
