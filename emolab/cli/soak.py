"""``emolab soak``: N agents for a long time with steering churn and disconnects; checks for drift."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from emolab.cli.common import UsageError, add_load_target, positive_int

__all__ = ["add_soak"]


def add_soak(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("soak", help="long run with steering churn and disconnects: errors, memory, rows, speed")
    add_load_target(p, "a vLLM-backend server")
    p.add_argument("--server-pid", type=int, default=None, help="with --base-url: sample this process's RSS")
    p.add_argument("--agents", type=positive_int("--agents"), default=20)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    p.add_argument("--window", type=float, default=60.0, help="seconds per tok/s window (last vs second compared)")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between memory/metrics samples")
    p.add_argument("--max-tokens", type=positive_int("--max-tokens"), default=128)
    p.add_argument("--prompt-words", type=positive_int("--prompt-words"), default=40)
    p.add_argument("--steer-share", type=float, default=0.8, help="share of requests that are steered")
    p.add_argument("--disconnect-share", type=float, default=0.2, help="share of requests abandoned mid-stream")
    p.add_argument("--alpha", type=float, default=1.0, help="bound of the random alphas")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON report")
    p.add_argument("--log-dir", default="runs/soak-logs")
    p.set_defaults(func=run_soak_cli)


def run_soak_cli(args: argparse.Namespace) -> int:
    from emolab.bench.soak import SoakConfig, run_soak

    for flag, value in (("--duration", args.duration), ("--window", args.window), ("--sample-every", args.sample_every)):
        if not math.isfinite(value) or value <= 0:
            raise UsageError(f"{flag} must be a positive number of seconds, got {value}")
    if args.duration < 3 * args.window:
        raise UsageError(f"--duration {args.duration:g} must hold at least 3 windows of --window {args.window:g}")
    for flag, value in (("--steer-share", args.steer_share), ("--disconnect-share", args.disconnect_share)):
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"{flag} must be between 0 and 1, got {value}")
    if not args.base_url and not (args.serve_model and args.serve_vectors):
        raise UsageError("give --base-url of a running server, or --serve-model and --serve-vectors to start one")
    config = SoakConfig(
        base_url=args.base_url or "", api_key=args.api_key, model=args.model, server_pid=args.server_pid,
        agents=args.agents, duration_s=args.duration, window_s=args.window, sample_s=args.sample_every,
        prompt_words=args.prompt_words, max_tokens=args.max_tokens, steer_share=args.steer_share,
        disconnect_share=args.disconnect_share, alpha=args.alpha, seed=args.seed,
    )
    if args.base_url:
        report = run_soak(config)
    else:
        report = _with_server(args, config)
    verdict = report["verdict"]
    for name, check in verdict["checks"].items():
        state = {True: "ok  ", False: "FAIL", None: "n/a "}[check["ok"]]
        details = ", ".join(f"{k} {v}" for k, v in check.items() if k != "ok")
        print(f"  {state} {name}: {details}")
    print(f"soak: {report['requests']} requests ({report['disconnects']} abandoned mid-stream), "
          f"{report['errors']} errors, verdict {'PASS' if verdict['ok'] else 'FAIL'}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.output}")
    return 0 if verdict["ok"] else 1


def _with_server(args: argparse.Namespace, config):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from emolab.bench.soak import run_soak
    from emolab.serve.launch import free_port, launch_server, stop_server, wait_for_health

    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    extra = ["--dtype", args.dtype, "--served-model-name", args.model, *args.server_arg]
    if args.max_model_len:
        extra += ["--max-model-len", str(args.max_model_len)]
    proc = launch_server(vectors=args.serve_vectors, model=args.serve_model, port=port, backend="vllm",
                         api_key=args.api_key or None, extra_args=extra, log_path=log_dir / "server.log")
    try:
        wait_for_health(f"http://127.0.0.1:{port}", timeout=900, process=proc)
        print(f"soak: server ready on port {port} (pid {proc.pid}); {args.agents} agents for {args.duration:g} s",
              file=sys.stderr, flush=True)
        return run_soak(replace(config, base_url=f"http://127.0.0.1:{port}/v1", server_pid=proc.pid))
    finally:
        stop_server(proc)
