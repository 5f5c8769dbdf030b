"""``emolab bench``: N simulated agents against a steering server, steered vs unsteered, side by side.

Each agent sends chat requests one after another (streaming, ``ignore_eos``, fixed prompt and
output lengths) through the ``openai`` async client. Scenarios pick each request's steering:

* ``none``  no steering (the baseline every ratio is taken against, same server, same run)
* ``same``  every request the same emotion and alpha
* ``mixed`` every request a random mix of one or two emotions with random alphas (seeded)
* ``churn`` mixed steering, and agents start late and stop early at random (requests join and
  leave the running batch all the time); its baseline is ``churn-none``, the same arrivals unsteered,
  which the bench adds by itself

With ``--serve`` the bench starts the server itself (timing its start-up), and can also start a
plain vLLM server with the plugin not loaded (``--compare-plain``) and an ``--enforce-eager`` one
(``--compare-eager``) to put the figures in context. Results print as a table and go to JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCENARIOS = ("none", "same", "mixed", "churn", "churn-none")
# Each scenario's ratio is taken against the unsteered run with the same arrival pattern.
BASELINE = {"none": "none", "same": "none", "mixed": "none", "churn": "churn-none", "churn-none": "churn-none"}
WORDS = ("river stone market window garden letter evening table morning station coffee paper "
         "mountain bridge lantern harbour orchard meadow village kitchen").split()


@dataclass
class RunResult:
    label: str
    scenario: str
    agents: int
    requests: int
    errors: int
    wall_s: float
    completion_tokens: int
    prompt_tokens_mean: float
    tok_per_s: float
    per_agent_tok_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    error_messages: list[str] = field(default_factory=list)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def make_prompt(rng: random.Random, n_words: int) -> str:
    body = " ".join(rng.choice(WORDS) for _ in range(max(1, n_words)))
    return f"Continue this list of words with more of them: {body}"


def pick_steering(scenario: str, rng: random.Random, n_emotions: int, alpha: float) -> list[float] | None:
    if scenario in ("none", "churn-none"):
        return None
    if scenario == "same":
        return [0, alpha]
    picks = rng.sample(range(n_emotions), k=rng.choice((1, 2)))
    return [x for e in picks for x in (e, round(rng.uniform(-alpha, alpha), 3))]


async def one_request(client, model: str, prompt: str, steering, max_tokens: int, stats: dict) -> None:
    extra: dict[str, Any] = {"ignore_eos": True}
    if steering is not None:
        extra["vllm_xargs"] = {"steering": steering}
    start = time.perf_counter()
    last = None
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body=extra,
    )
    async for chunk in stream:
        now = time.perf_counter()
        if chunk.choices and chunk.choices[0].delta.content:
            if last is None:
                stats["ttft"].append(now - start)
            else:
                stats["itl"].append(now - last)
            last = now
        if chunk.usage is not None:
            stats["completion_tokens"] += chunk.usage.completion_tokens
            stats["prompt_tokens"].append(chunk.usage.prompt_tokens)


async def run_scenario(base_url: str, api_key: str, model: str, scenario: str, agents: int, *, requests_per_agent: int,
                       prompt_words: int, max_tokens: int, alpha: float, n_emotions: int, seed: int,
                       label: str) -> RunResult:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=api_key or "none", timeout=600, max_retries=0)
    stats: dict[str, Any] = {"ttft": [], "itl": [], "completion_tokens": 0, "prompt_tokens": []}
    errors: list[str] = []
    agent_rates: list[float] = []
    n_requests = 0
    rng_master = random.Random(seed)

    async def agent(index: int) -> None:
        nonlocal n_requests
        rng = random.Random(rng_master.random() + index)
        count = requests_per_agent
        if scenario.startswith("churn"):  # join late, leave early: the batch composition keeps changing
            await asyncio.sleep(rng.uniform(0, 0.5 * requests_per_agent))
            count = rng.randint(1, 2 * requests_per_agent)
        before = stats["completion_tokens"]
        began = time.perf_counter()
        for _ in range(count):
            steering = pick_steering(scenario, rng, n_emotions, alpha)
            try:
                await one_request(client, model, make_prompt(rng, prompt_words), steering, max_tokens, stats)
            except Exception as exc:  # counted and reported, the other agents go on
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
            n_requests += 1
        agent_rates.append((stats["completion_tokens"] - before) / max(time.perf_counter() - began, 1e-9))

    began = time.perf_counter()
    await asyncio.gather(*(agent(i) for i in range(agents)))
    wall = time.perf_counter() - began
    await client.close()
    return RunResult(
        label=label, scenario=scenario, agents=agents, requests=n_requests, errors=len(errors), wall_s=round(wall, 3),
        completion_tokens=stats["completion_tokens"],
        prompt_tokens_mean=float(np.mean(stats["prompt_tokens"])) if stats["prompt_tokens"] else float("nan"),
        tok_per_s=stats["completion_tokens"] / wall, per_agent_tok_per_s=float(np.mean(agent_rates)),
        ttft_p50_ms=pct(stats["ttft"], 50), ttft_p99_ms=pct(stats["ttft"], 99),
        itl_p50_ms=pct(stats["itl"], 50), itl_p99_ms=pct(stats["itl"], 99), error_messages=errors[:5],
    )


async def calibrate_prompt_words(base_url: str, api_key: str, model: str, prompt_tokens: int) -> int:
    """Words per prompt so that the chat prompt is about ``prompt_tokens`` tokens for this tokenizer."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=api_key or "none", timeout=600, max_retries=0)
    probe = 100
    reply = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": make_prompt(random.Random(0), probe)}], max_tokens=1)
    base = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": make_prompt(random.Random(0), 1)}], max_tokens=1)
    await client.close()
    per_word = (reply.usage.prompt_tokens - base.usage.prompt_tokens) / (probe - 1)
    return max(1, round((prompt_tokens - base.usage.prompt_tokens) / max(per_word, 1e-6)))


async def emotions_count(base_url: str, api_key: str) -> int:
    import httpx

    async with httpx.AsyncClient(timeout=30) as http:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        reply = await http.get(base_url.rstrip("/") + "/emotions", headers=headers)
        reply.raise_for_status()
        return len(reply.json()["emotions"])


def bench_server(base_url: str, args: argparse.Namespace, label: str, scenarios: list[str],
                 agent_counts: list[int] | None = None) -> list[RunResult]:
    agent_counts = agent_counts or args.agents

    async def main() -> list[RunResult]:
        n_emotions = await emotions_count(base_url, args.api_key) if any(s != "none" for s in scenarios) else 6
        words = await calibrate_prompt_words(base_url, args.api_key, args.model, args.prompt_tokens)
        results = []
        # Warm-up so the first measured run pays no one-off costs.
        await run_scenario(base_url, args.api_key, args.model, "none", min(4, max(agent_counts)), requests_per_agent=1,
                           prompt_words=words, max_tokens=8, alpha=args.alpha, n_emotions=n_emotions, seed=0, label="warmup")
        for repeat in range(args.repeats):
            for agents in agent_counts:
                for scenario in scenarios:  # interleaved, so drift hits every scenario alike
                    result = await run_scenario(
                        base_url, args.api_key, args.model, scenario, agents, requests_per_agent=args.requests_per_agent,
                        prompt_words=words, max_tokens=args.max_tokens, alpha=args.alpha, n_emotions=n_emotions,
                        seed=args.seed + repeat, label=label)
                    results.append(result)
                    print(f"  [{label}] repeat {repeat + 1}/{args.repeats} N={agents:<3} {scenario:<6} "
                          f"{result.tok_per_s:9.1f} tok/s  errors {result.errors}", flush=True)
        return results

    return asyncio.run(main())


def summarize(results: list[RunResult]) -> list[dict[str, Any]]:
    """Median over repeats per (label, scenario, N), with the ratio to ``none`` of the same label and N."""
    groups: dict[tuple, list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.label, r.scenario, r.agents), []).append(r)
    rows = []
    for (label, scenario, agents), runs in groups.items():
        row = {"label": label, "scenario": scenario, "agents": agents, "repeats": len(runs),
               "tok_per_s": float(np.median([r.tok_per_s for r in runs])),
               "per_agent_tok_per_s": float(np.median([r.per_agent_tok_per_s for r in runs])),
               "ttft_p50_ms": float(np.median([r.ttft_p50_ms for r in runs])),
               "ttft_p99_ms": float(np.median([r.ttft_p99_ms for r in runs])),
               "itl_p50_ms": float(np.median([r.itl_p50_ms for r in runs])),
               "itl_p99_ms": float(np.median([r.itl_p99_ms for r in runs])),
               "errors": sum(r.errors for r in runs),
               "prompt_tokens_mean": float(np.mean([r.prompt_tokens_mean for r in runs]))}
        rows.append(row)
    base = {(r["label"], r["scenario"], r["agents"]): r["tok_per_s"] for r in rows}
    for row in rows:
        own = base.get((row["label"], BASELINE[row["scenario"]], row["agents"]))
        plain = base.get(("plain-vllm", "none", row["agents"]))
        row["ratio_vs_unsteered"] = row["tok_per_s"] / own if own else None
        row["ratio_vs_plain_vllm"] = row["tok_per_s"] / plain if plain and row["scenario"] in ("none", "same", "mixed") else None
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="emolab bench (median over repeats)")
    for col in ("server", "scenario", "N", "tok/s", "ratio", "vs plain", "per agent", "TTFT p50/p99 ms",
                "ITL p50/p99 ms", "err"):
        table.add_column(col, justify="right")
    for r in sorted(rows, key=lambda r: (r["label"], r["agents"], SCENARIOS.index(r["scenario"]))):
        ratio, plain = r["ratio_vs_unsteered"], r["ratio_vs_plain_vllm"]
        table.add_row(r["label"], r["scenario"], str(r["agents"]), f"{r['tok_per_s']:.1f}",
                      "" if ratio is None else f"{ratio:.3f}", "" if plain is None else f"{plain:.3f}",
                      f"{r['per_agent_tok_per_s']:.1f}",
                      f"{r['ttft_p50_ms']:.0f}/{r['ttft_p99_ms']:.0f}", f"{r['itl_p50_ms']:.1f}/{r['itl_p99_ms']:.1f}",
                      str(r["errors"]))
    Console().print(table)


def start_server(args: argparse.Namespace, label: str, port: int, log_dir: Path):
    """Start a server for the bench and time it until /health answers."""
    import os
    import subprocess

    from emolab.server import launch_server, wait_for_health

    begin = time.perf_counter()
    common = ["--dtype", args.dtype, "--served-model-name", args.model, *(args.server_arg or [])]
    if args.max_model_len:
        common += ["--max-model-len", str(args.max_model_len)]
    if label == "plain-vllm":  # vLLM itself with the plugin not loaded: the reference
        from emolab.models import resolve_model

        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(args.serve_model),
               "--port", str(port), "--host", "127.0.0.1", "--dtype", args.dtype, "--served-model-name", args.model,
               *(args.server_arg_plain or [])]
        if args.max_model_len:
            cmd += ["--max-model-len", str(args.max_model_len)]
        log = open(log_dir / f"{label}.log", "wb")
        env = {**os.environ, "VLLM_PLUGINS": ""}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        proc.log_path = log_dir / f"{label}.log"  # type: ignore[attr-defined]
    else:
        extra = common + (["--enforce-eager"] if label == "emolab-eager" else [])
        proc = launch_server(vectors=args.serve_vectors, model=args.serve_model, port=port, backend=args.serve_backend,
                             api_key=args.api_key or None, extra_args=extra, log_path=log_dir / f"{label}.log")
    wait_for_health(f"http://127.0.0.1:{port}", timeout=args.startup_timeout, process=proc)
    return proc, time.perf_counter() - begin


def run_bench(args: argparse.Namespace) -> int:
    from emolab.server import stop_server

    scenarios = list(args.scenarios)
    if "churn" in scenarios and "churn-none" not in scenarios:
        scenarios.insert(scenarios.index("churn"), "churn-none")
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad:
        from emolab.cli import UsageError

        raise UsageError(f"--scenarios: unknown {bad}; choose from {SCENARIOS}")
    all_results: list[RunResult] = []
    startup: dict[str, float] = {}
    if not args.serve_model:
        if not args.base_url:
            from emolab.cli import UsageError

            raise UsageError("give --base-url of a running server, or --serve-model and --serve-vectors to start one")
        print(f"bench against {args.base_url}", flush=True)
        all_results += bench_server(args.base_url, args, "emolab", scenarios)
    else:
        log_dir = Path(args.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        plan = [("emolab", scenarios)]
        if args.compare_plain:
            plan.append(("plain-vllm", ["none"]))
        if args.compare_eager:
            plan.append(("emolab-eager", scenarios))
        for label, label_scenarios in plan:
            port = _free_port()
            print(f"starting {label} server on port {port} ...", flush=True)
            proc, seconds = start_server(args, label, port, log_dir)
            startup[label] = round(seconds, 1)
            print(f"  {label} ready after {seconds:.1f} s", flush=True)
            try:
                counts = args.agents if label == "emolab" else (args.compare_agents or args.agents)
                all_results += bench_server(f"http://127.0.0.1:{port}/v1", args, label, label_scenarios, counts)
            finally:
                stop_server(proc)
    rows = summarize(all_results)
    print_table(rows)
    if startup:
        print("server start-up to /health (s): " + ", ".join(f"{k} {v}" for k, v in startup.items()))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({
            "config": {k: v for k, v in vars(args).items() if k not in ("func", "api_key")},
            "startup_s": startup, "summary": rows, "runs": [asdict(r) for r in all_results]}, indent=2))
        print(f"wrote {args.output}")
    return 1 if any(r.errors for r in all_results) else 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def add_bench(sub: argparse._SubParsersAction) -> None:
    from emolab.cli import number_list, positive_int

    p = sub.add_parser("bench", help="throughput of N simulated agents, steered vs unsteered")
    p.add_argument("--base-url", default=None, help="running server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default="", help="bearer key of the server")
    p.add_argument("--model", default="emolab", help="served model name to request")
    p.add_argument("--agents", type=number_list("--agents", int, minimum=1), default=[1, 20, 64], help="comma-separated agent counts")
    p.add_argument("--scenarios", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                   default=["none", "mixed", "churn"], help=f"comma-separated, from {','.join(SCENARIOS)}")
    p.add_argument("--prompt-tokens", type=positive_int("--prompt-tokens"), default=200)
    p.add_argument("--max-tokens", type=positive_int("--max-tokens"), default=256)
    p.add_argument("--requests-per-agent", type=positive_int("--requests-per-agent"), default=2)
    p.add_argument("--repeats", type=positive_int("--repeats"), default=2)
    p.add_argument("--alpha", type=float, default=1.0, help="alpha of 'same'; bound of the random alphas")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON results file")
    p.add_argument("--serve-model", default=None, help="start a server for this model (with --serve-vectors)")
    p.add_argument("--serve-vectors", default=None)
    p.add_argument("--serve-backend", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for emolab serve (repeatable)")
    p.add_argument("--server-arg-plain", action="append", default=[], help="extra argument for the plain vLLM server")
    p.add_argument("--compare-plain", action="store_true", help="also run 'none' on vLLM with the plugin not loaded")
    p.add_argument("--compare-eager", action="store_true", help="also run on an --enforce-eager emolab server")
    p.add_argument("--compare-agents", type=number_list("--compare-agents", int, minimum=1), default=None,
                   help="agent counts for the plain/eager comparison servers (default: --agents)")
    p.add_argument("--startup-timeout", type=float, default=900)
    p.add_argument("--log-dir", default="runs/bench-logs")
    p.set_defaults(func=run_bench)
