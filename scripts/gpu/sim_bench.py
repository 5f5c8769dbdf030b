"""Agent simulations through a running emolab server, steered against unsteered, timed side by side.

    python3 scripts/gpu/sim_bench.py --base-url http://127.0.0.1:8000/v1 --agents 20 --turns 8 --out DIR

Each configuration is a conversation of N agents (``emolab.simulate``): ``unsteered`` runs the control
alone, ``steered`` runs every agent steered (the condition's emotion at ``--alpha`` on the server's
scale); the two alternate ``--repeats`` times on one server, each into a fresh run folder, and the
generated tokens over the wall time of the run give tok/s. Replies are not judged (the weights may be
dummy): the state rule is fixed. Prints one JSON line per run and a summary with the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from emolab.simulate import ExperimentSpec, read_trials
from emolab.simulate.runner import run_experiment_async


def spec(agents: int, turns: int, max_tokens: int, steered: bool, emotion: str, alpha: float, window: int) -> ExperimentSpec:
    conditions = {"emotions": [emotion], "alphas": [alpha], "alpha_unit": "raw", "prompted": False,
                  "steered_prompted": False, "control": not steered, "steered": steered}
    return ExperimentSpec.from_dict({
        "name": f"bench-{'steered' if steered else 'unsteered'}-{agents}", "kind": "conversation",
        "opening": "The town council just announced that the community garden will close next month. Thoughts?",
        "agents": {"count": agents, "seeded": agents if steered else 0}, "turns": turns, "window": window,
        "conditions": conditions, "sampling": {"max_tokens": max_tokens, "temperature": 0.0},
        "concurrency": max(agents, 1)})


async def one(base_url: str, folder: Path, s: ExperimentSpec) -> dict:
    began = time.perf_counter()
    log = await run_experiment_async(s, folder, base_url=base_url, progress=False, judge=None)
    wall = time.perf_counter() - began
    records = read_trials(folder)
    tokens = sum((r.get("usage") or {}).get("completion_tokens", 0) for r in records)
    latencies = sorted(r["latency_s"] for r in records)
    return {"name": s.name, "agents": s.agents.count, "turns": s.turns, "replies": len(log.done), "tokens": tokens,
            "wall_s": round(wall, 2), "tok_s": round(tokens / wall, 1),
            "latency_p50_s": latencies[len(latencies) // 2], "latency_max_s": latencies[-1],
            "errors": s.turns * s.agents.count - len(log.done)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--agents", type=int, nargs="+", default=[20])
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="untimed steered + unsteered pairs first (graphs, caches)")
    p.add_argument("--emotion", default="fear")
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    results = []
    for agents in args.agents:
        for w in range(args.warmup):
            for steered in (False, True):
                s = spec(agents, args.turns, args.max_tokens, steered, args.emotion, args.alpha, args.window)
                print(json.dumps({"warmup": w, **asyncio.run(one(args.base_url, Path(args.out) / f"warm-{s.name}-{w}", s))}))
        for repeat in range(args.repeats):
            for steered in ((False, True) if repeat % 2 == 0 else (True, False)):
                s = spec(agents, args.turns, args.max_tokens, steered, args.emotion, args.alpha, args.window)
                row = asyncio.run(one(args.base_url, Path(args.out) / f"{s.name}-{repeat}", s))
                row["repeat"] = repeat
                print(json.dumps(row), flush=True)
                results.append(row)
    summary = []
    for agents in args.agents:
        mean = {k: sum(r["tok_s"] for r in results if r["agents"] == agents and r["name"].startswith(f"bench-{k}"))
                / args.repeats for k in ("steered", "unsteered")}
        summary.append({"agents": agents, "unsteered_tok_s": round(mean["unsteered"], 1),
                        "steered_tok_s": round(mean["steered"], 1), "ratio": round(mean["steered"] / mean["unsteered"], 3),
                        "errors": sum(r["errors"] for r in results if r["agents"] == agents)})
    print(json.dumps({"summary": summary}), flush=True)
    Path(args.out, "sim_bench.json").write_text(json.dumps({"runs": results, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
