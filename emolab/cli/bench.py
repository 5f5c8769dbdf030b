"""``emolab bench``: throughput of N simulated agents, steered vs unsteered, measured side by side."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from emolab.cli.common import UsageError, add_load_target, number_list, positive_int, word_list

__all__ = ["add_bench"]


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput of N simulated agents, steered vs unsteered")
    add_load_target(p, "a server (--serve-backend)")
    p.add_argument("--agents", type=number_list("--agents", int, minimum=1), default=[1, 20, 64], help="comma-separated agent counts")
    p.add_argument("--scenarios", type=word_list, default=None,
                   help="comma-separated, from none, same, mixed, mixed-null, churn, churn-none (default none,mixed,"
                        "churn); --engine: from none, mixed, mixed-null, controls, readout (default none,mixed)")
    p.add_argument("--prompt-tokens", type=positive_int("--prompt-tokens"), default=200)
    p.add_argument("--max-tokens", type=positive_int("--max-tokens"), default=256)
    p.add_argument("--requests-per-agent", type=positive_int("--requests-per-agent"), default=2)
    p.add_argument("--repeats", type=positive_int("--repeats"), default=2)
    p.add_argument("--alpha", type=float, default=1.0, help="alpha of 'same'; bound of the random alphas")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (default); above 0 every request samples with its own seed, the same seed in "
                        "every scenario, so unsteered text varies as a real model's does")
    p.add_argument("--output", default=None, help="JSON results file")
    p.add_argument("--serve-backend", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--server-arg-plain", action="append", default=[], help="extra argument for the plain vLLM server")
    p.add_argument("--api-server-count", type=positive_int("--api-server-count"), default=1, metavar="K",
                   help="API-server processes of every server the bench starts, emolab's and plain vLLM's alike")
    p.add_argument("--compare-plain", action="store_true", help="also run 'none' on vLLM with the plugin not loaded")
    p.add_argument("--compare-eager", action="store_true", help="also run on an --enforce-eager emolab server")
    p.add_argument("--compare-agents", type=number_list("--compare-agents", int, minimum=1), default=None,
                   help="agent counts for the plain/eager comparison servers (default: --agents)")
    p.add_argument("--startup-timeout", type=float, default=900)
    p.add_argument("--log-dir", default="runs/bench-logs")
    p.add_argument("--engine", action="store_true",
                   help="engine level: an offline vllm.LLM (no HTTP, no client limits) with --serve-model/--serve-vectors")
    p.add_argument("--engine-seconds", type=float, default=30.0, help="--engine: each run lasts about this long")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="--engine: a vllm.LLM argument, VALUE as JSON when it parses (e.g. tensor_parallel_size=2)")
    p.add_argument("--client-processes", type=positive_int("--client-processes"), default=1,
                   help="spread the agents over this many client processes (so the client is not the limit)")
    p.add_argument("--min-run-seconds", type=float, default=30.0,
                   help="a run shorter than this, or one whose client process was CPU-bound, is marked 'not a "
                        "measurement' instead of showing its ratio")
    p.set_defaults(func=run_bench_cli)


def engine_kwargs(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` flags as ``vllm.LLM`` keyword arguments (VALUE parsed as JSON when it is JSON)."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--engine-arg takes KEY=VALUE with a Python name as KEY, got {item!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def print_clocks(runs: list[dict[str, Any]]) -> None:
    """The card's mean SM clock and power per run, where the bench could sample them (nvidia-smi)."""
    from emolab.bench.gpu_clocks import clock_lines

    if lines := clock_lines(runs):
        print("the card during each run (mean SM clock, power drawn of the limit):")
        print("\n".join(lines))


def run_engine_cli(args: argparse.Namespace) -> int:
    from emolab.bench.engine import run_engine_bench

    if not args.serve_model or not args.serve_vectors:
        raise UsageError("--engine needs --serve-model and --serve-vectors")
    if not math.isfinite(args.engine_seconds) or args.engine_seconds <= 0:
        raise UsageError(f"--engine-seconds must be a positive number, got {args.engine_seconds}")
    from emolab.bench.engine import ENGINE_SCENARIOS as engine_scenarios

    scenarios = tuple(args.scenarios or ("none", "mixed"))
    unknown = [s for s in scenarios if s not in engine_scenarios]
    if unknown:
        raise UsageError(f"--scenarios {','.join(unknown)}: --engine runs {', '.join(engine_scenarios)}")
    kwargs = {"dtype": args.dtype, **({"max_model_len": args.max_model_len} if args.max_model_len else {}),
              **engine_kwargs(args.engine_arg)}
    result = run_engine_bench(
        model=args.serve_model, vectors=args.serve_vectors, agents=args.agents, repeats=args.repeats,
        prompt_tokens=args.prompt_tokens, max_tokens=args.max_tokens, alpha=args.alpha, seed=args.seed,
        run_seconds=args.engine_seconds, engine_kwargs=kwargs, compare_plain=args.compare_plain, log_dir=args.log_dir,
        scenarios=scenarios, temperature=args.temperature,
    )
    for row in result["summary"]:
        ratio = "" if row["ratio_vs_none"] is None else f"  vs none {row['ratio_vs_none']:.3f}"
        plain = "" if row["ratio_vs_plain"] is None else f"  vs plain {row['ratio_vs_plain']:.3f}"
        spread = "" if row.get("spread") is None else f"  (repeats {row['spread']:.1%} apart)"
        print(f"engine N={row['agents']:<4} {row['scenario']:<10} {row['tok_per_s']:10.1f} tok/s{ratio}{plain}{spread}")
    print_clocks(result["runs"])
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"config": {k: v for k, v in vars(args).items()
                                                            if k not in ("func", "api_key")}, **result}, indent=2))
        print(f"wrote {args.output}")
    return 0


def run_bench_cli(args: argparse.Namespace) -> int:
    from emolab.bench import BenchConfig, print_table, run_bench
    from emolab.bench.config import BenchError, check_temperature

    try:
        check_temperature(args.temperature)
    except BenchError as exc:
        raise UsageError(f"--{exc}") from None
    if args.engine:
        return run_engine_cli(args)

    if not math.isfinite(args.min_run_seconds) or args.min_run_seconds < 0:
        raise UsageError(f"--min-run-seconds must be a number >= 0, got {args.min_run_seconds}")
    config = BenchConfig(
        base_url=args.base_url, api_key=args.api_key, model=args.model, agents=args.agents,
        scenarios=args.scenarios or ["none", "mixed", "churn"],
        prompt_tokens=args.prompt_tokens, max_tokens=args.max_tokens, requests_per_agent=args.requests_per_agent,
        repeats=args.repeats, alpha=args.alpha, seed=args.seed, temperature=args.temperature, output=args.output,
        serve_model=args.serve_model,
        serve_vectors=args.serve_vectors, serve_backend=args.serve_backend, dtype=args.dtype,
        max_model_len=args.max_model_len, server_args=args.server_arg, server_args_plain=args.server_arg_plain,
        api_server_count=args.api_server_count, compare_plain=args.compare_plain, compare_eager=args.compare_eager, compare_agents=args.compare_agents,
        startup_timeout=args.startup_timeout, log_dir=args.log_dir, client_processes=args.client_processes,
        min_run_seconds=args.min_run_seconds,
    )
    result = run_bench(config)
    print_table(result["summary"], result["not_a_measurement"])
    print_clocks(result["runs"])
    if result["startup_s"]:
        print("server start-up to /health (s): " + ", ".join(f"{k} {v}" for k, v in result["startup_s"].items()))
    if config.output:
        print(f"wrote {config.output}")
    return 1 if any(run["errors"] for run in result["runs"]) else 0
