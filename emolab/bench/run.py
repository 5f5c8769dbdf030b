"""``emolab bench``: N simulated agents against steering servers, steered vs unsteered, side by side.

Each agent sends chat requests one after another (streaming, ``ignore_eos``, fixed prompt and
output lengths). Scenarios (``emolab.bench.load``) pick each request's steering; every ratio is
taken against the unsteered run of the same server, in the same run, interleaved across repeats.
With ``serve_model`` the bench starts the servers itself (``emolab.bench.servers``), timing start-up.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emolab.api_client import AsyncSteeringClient
from emolab.bench.clients import ClientPool
from emolab.bench.load import SCENARIOS, RunResult, calibrate_prompt_words, run_scenario, to_result
from emolab.bench.servers import start_bench_server
from emolab.bench.tables import summarize_runs
from emolab.core.errors import EmolabError
from emolab.serve.launch import free_port, stop_server

__all__ = ["BenchConfig", "BenchError", "bench_server", "run_bench"]


class BenchError(EmolabError, ValueError):
    """Bench settings that cannot run."""


@dataclass
class BenchConfig:
    base_url: str | None = None  # a running server, e.g. http://127.0.0.1:8000/v1
    api_key: str = ""
    model: str = "emolab"  # the served model name requested
    agents: list[int] = field(default_factory=lambda: [1, 20, 64])
    scenarios: list[str] = field(default_factory=lambda: ["none", "mixed", "churn"])
    prompt_tokens: int = 200
    max_tokens: int = 256
    requests_per_agent: int = 2
    repeats: int = 2
    alpha: float = 1.0  # alpha of 'same'; bound of the random alphas
    seed: int = 0
    output: str | None = None  # JSON results file
    serve_model: str | None = None  # start servers for this model (with serve_vectors)
    serve_vectors: str | None = None
    serve_backend: str = "vllm"
    dtype: str = "auto"
    max_model_len: int | None = None
    server_args: list[str] = field(default_factory=list)  # extra arguments for emolab serve
    server_args_plain: list[str] = field(default_factory=list)  # extra arguments for the plain vLLM server
    compare_plain: bool = False
    compare_eager: bool = False
    compare_agents: list[int] | None = None
    startup_timeout: float = 900.0
    log_dir: str = "runs/bench-logs"
    client_processes: int = 1  # spread the agents over this many client processes (N = 64-256 on a GPU)

    def checked_scenarios(self) -> list[str]:
        """The scenarios to run, with ``churn-none`` (churn's own baseline) added when churn is asked for."""
        scenarios = list(self.scenarios)
        if "churn" in scenarios and "churn-none" not in scenarios:
            scenarios.insert(scenarios.index("churn"), "churn-none")
        bad = [s for s in scenarios if s not in SCENARIOS]
        if bad:
            raise BenchError(f"unknown scenarios {bad}; choose from {SCENARIOS}", setting="scenarios")
        return scenarios


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
            common = dict(prompt_words=words, alpha=config.alpha, n_emotions=n_emotions)
            # Warm-up so the first measured run pays no one-off costs (connections, server-side caches).
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
                        print(f"  [{label}] repeat {repeat + 1}/{config.repeats} N={agents:<3} {scenario:<6} "
                              f"{result.tok_per_s:9.1f} tok/s  errors {result.errors}", flush=True)
            return results
        finally:
            if pool is not None:
                pool.close()
            loop.run(client.close())


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run the whole bench; return (and write to ``config.output``) config, start-up times, summary and runs."""
    scenarios = config.checked_scenarios()
    all_results: list[RunResult] = []
    startup: dict[str, float] = {}
    if not config.serve_model:
        if not config.base_url:
            raise BenchError("give the URL of a running server, or a model and bundle to start one", setting="base_url")
        print(f"bench against {config.base_url}", flush=True)
        all_results += bench_server(config.base_url, config, "emolab", scenarios)
    else:
        log_dir = Path(config.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        plan = [("emolab", scenarios)]
        if config.compare_plain:
            plan.append(("plain-vllm", ["none"]))
        if config.compare_eager:
            plan.append(("emolab-eager", scenarios))
        for label, label_scenarios in plan:
            port = free_port()
            print(f"starting {label} server on port {port} ...", flush=True)
            proc, seconds = start_bench_server(config, label, port, log_dir)
            startup[label] = round(seconds, 1)
            print(f"  {label} ready after {seconds:.1f} s", flush=True)
            try:
                counts = config.agents if label == "emolab" else (config.compare_agents or config.agents)
                all_results += bench_server(f"http://127.0.0.1:{port}/v1", config, label, label_scenarios, counts)
            finally:
                stop_server(proc)
    result = {"config": {k: v for k, v in asdict(config).items() if k != "api_key"}, "startup_s": startup,
              "summary": summarize_runs(all_results), "runs": [asdict(r) for r in all_results]}
    if config.output:
        Path(config.output).parent.mkdir(parents=True, exist_ok=True)
        Path(config.output).write_text(json.dumps(result, indent=2))
    return result
