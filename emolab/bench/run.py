"""``emolab bench``: N simulated agents against steering servers, steered vs unsteered, side by side.

Each agent sends chat requests one after another (streaming, ``ignore_eos``, fixed prompt and
output lengths). Scenarios (``emolab.bench.load``) pick each request's steering; every ratio is
taken against the unsteered run of the same server, in the same run, interleaved across repeats.
With ``serve_model`` the bench starts the servers itself (``emolab.bench.servers``), timing start-up.
The summary (the printed table and the JSON's ``summary``) is one frame, ``emolab.bench.tables.bench_frame``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from emolab.api_client import AsyncSteeringClient
from emolab.bench.clients import ClientPool
from emolab.bench.config import BenchConfig, BenchError
from emolab.bench.gpu_clocks import ClockLog, ClockSample, annotate
from emolab.bench.load import (
    RunResult,
    calibrate_prompt_words,
    measurement_problems,
    not_measured,
    run_scenario,
    to_result,
)
from emolab.bench.servers import start_bench_server
from emolab.bench.tables import summarize_runs
from emolab.serve.launch import free_port, stop_server

__all__ = ["bench_server", "run_bench"]


def bench_server(base_url: str, config: BenchConfig, label: str, scenarios: list[str],
                 agent_counts: list[int] | None = None) -> list[RunResult]:
    """Every (repeat, N, scenario) against one server, interleaved so drift hits every scenario alike.

    One client and one event loop serve the calibration, the warm-up and every measured run, so the
    runs reuse the connections the warm-up opened. With ``config.client_processes`` > 1 the agents of
    each run are spread over that many client processes (``emolab.bench.clients``), warmed up the same way.
    """
    agent_counts = agent_counts or config.agents
    client = AsyncSteeringClient(base_url, api_key=config.api_key or None, model=config.model, timeout=600)
    pool = None
    with asyncio.Runner() as loop:
        try:
            n_emotions = len(loop.run(client.emotions())) if any(s != "none" for s in scenarios) else 6
            words = loop.run(calibrate_prompt_words(client, config.prompt_tokens))
            common = dict(prompt_words=words, alpha=config.alpha, n_emotions=n_emotions, temperature=config.temperature)
            # Warm-up so the first measured run pays no one-off costs: one request of the measured length (an eager
            # backend's allocator and kernels meet the longest sequences once), then a few short ones in parallel
            # (connections, server-side caches).
            loop.run(run_scenario(client, "none", 1, label="warmup", requests_per_agent=1,
                                  max_tokens=config.max_tokens, seed=0, **common))
            warmup = dict(requests_per_agent=1, max_tokens=8, seed=0, **common)
            warmup_agents = min(4, max(agent_counts))
            loop.run(run_scenario(client, "none", warmup_agents, label="warmup", **warmup))
            if config.client_processes > 1:
                pool = ClientPool(base_url, config.api_key, config.model, config.client_processes)
                pool.run("none", warmup_agents * config.client_processes, **warmup)
            results = []
            for repeat in range(config.repeats):
                for agents in agent_counts:
                    for scenario in scenarios:
                        kwargs = dict(requests_per_agent=config.requests_per_agent, max_tokens=config.max_tokens,
                                      seed=config.seed + repeat, **common)
                        if pool is None:
                            result = loop.run(run_scenario(client, scenario, agents, label=label, **kwargs))
                        else:
                            result = to_result(pool.run(scenario, agents, **kwargs), label=label, scenario=scenario,
                                               agents=agents)
                        results.append(result)
                        problems = measurement_problems(result, config.min_run_seconds)
                        print(f"  [{label}] repeat {repeat + 1}/{config.repeats} N={agents:<3} {scenario:<6} "
                              f"{result.tok_per_s:9.1f} tok/s  errors {result.errors}  {result.wall_s:.1f} s, "
                              f"busiest client process on or waiting for a CPU {result.client_cpu_share:.0%}"
                              + (f"  NOT A MEASUREMENT: {'; '.join(problems)}" if problems else ""), flush=True)
            return results
        finally:
            if pool is not None:
                pool.close()
            loop.run(client.close())


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run the whole bench; return (and write to ``config.output``) config, start-up times, summary and runs."""
    scenarios = config.checked_scenarios()
    config.checked_temperature()
    all_results: list[RunResult] = []
    startup: dict[str, float] = {}
    samples: list[ClockSample] = []  # the card's clocks: only where the bench starts the servers on this host and nvidia-smi is here
    if not config.serve_model:
        if not config.base_url:
            raise BenchError("give the URL of a running server, or a model and bundle to start one", setting="base_url")
        print(f"bench against {config.base_url}", flush=True)
        all_results += bench_server(config.base_url, config, "emolab", scenarios)
    else:
        with ClockLog(Path(config.log_dir) / "gpu-clocks.csv") as clocks:
            all_results += _bench_started_servers(config, scenarios, startup)
        samples = clocks.samples()
    summary = summarize_runs(all_results)
    # Ratios over runs that measured the client, or ran too short, are named here and not printed as results.
    marks = [{"label": row["label"], "scenario": row["scenario"], "agents": row["agents"], "why": why}
             for row in summary
             if (why := not_measured(all_results, row["label"], row["scenario"], row["agents"], config.min_run_seconds))]
    result = {"config": {k: v for k, v in asdict(config).items() if k != "api_key"}, "startup_s": startup,
              "summary": summary, "not_a_measurement": marks, "runs": [asdict(r) for r in all_results]}
    annotate(result["runs"], samples)
    if config.output:
        Path(config.output).parent.mkdir(parents=True, exist_ok=True)
        Path(config.output).write_text(json.dumps(result, indent=2))
    return result


def _bench_started_servers(config: BenchConfig, scenarios: list[str], startup: dict[str, float]) -> list[RunResult]:
    """Start each server of the plan (emolab, then plain vLLM or eager emolab when asked) in turn and bench it."""
    log_dir = Path(config.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    plan = [("emolab", scenarios)]
    if config.compare_plain:
        plan.append(("plain-vllm", ["none"]))
    if config.compare_eager:
        plan.append(("emolab-eager", scenarios))
    results: list[RunResult] = []
    for label, label_scenarios in plan:
        port = free_port()
        print(f"starting {label} server on port {port} ...", flush=True)
        proc, seconds = start_bench_server(config, label, port, log_dir)
        startup[label] = round(seconds, 1)
        print(f"  {label} ready after {seconds:.1f} s", flush=True)
        try:
            counts = config.agents if label == "emolab" else (config.compare_agents or config.agents)
            results += bench_server(f"http://127.0.0.1:{port}/v1", config, label, label_scenarios, counts)
        finally:
            stop_server(proc)
    return results
