"""Engine-level bench: the steering cost inside vLLM's engine, without HTTP or a client in the way.

An offline ``vllm.LLM`` runs N simulated agents: exactly N requests are in flight at every engine
step (a finished request is replaced by that agent's next one), each with a fixed prompt length and
``max_tokens`` generated (``ignore_eos``). Scenarios ``none``, ``mixed`` (every request a random
blend of one or two emotions) and, when asked for, ``mixed-null`` (those blends at a millionth of the
alpha: the steering code without its effect on the text; ``emolab.bench.load``), ``controls`` (the blends
with a random mode per emotion, an ablation and a scope) and ``readout`` (unsteered, every request asking for
its readout) alternate in one engine,
repeat after repeat; ``plain`` is the same
load on an engine with the plugin not loaded, in its own process (``VLLM_PLUGINS=""``). Runs are
sized to last about ``run_seconds`` each, so a 2% difference can be read.

Each engine lives in its own process: ``python -m emolab.bench.engine JOB.json OUT.json``.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from emolab.bench.config import check_temperature
from emolab.bench.gpu_clocks import ClockLog, annotate
from emolab.bench.load import pick_steering, repeat_spread

__all__ = ["ENGINE_SCENARIOS", "engine_job", "run_engine_bench"]

WORDS = ("river stone market window garden letter evening table morning station coffee paper mountain bridge "
         "lantern harbour orchard meadow village kitchen").split()


def _prompts(tokenizer: Any, count: int, length: int, seed: int) -> list[list[int]]:
    """``count`` distinct prompts of exactly ``length`` token ids (distinct: no prefix-cache hits)."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(length * 2))
        prompts.append(tokenizer(text, add_special_tokens=False).input_ids[:length])
    return prompts


ENGINE_SCENARIOS = ("none", "mixed", "mixed-null", "controls", "readout")


def _engine_args(scenario: str, rng: random.Random, n_emotions: int, alpha: float) -> dict[str, Any] | None:
    """The request's ``extra_args`` (what ``vllm_xargs`` becomes) for a scenario; None unsteered.

    ``controls``: mixed's blend, each emotion added or clamped at random, sometimes a third emotion ablated,
    and a random scope; ``readout``: unsteered, asking for the readout (means)."""
    if scenario in ("plain", "none"):
        return None
    if scenario == "readout":
        from emolab.fastpath.readout_store import READOUT_XARG, new_key

        return {READOUT_XARG: f"{new_key()}:means"}
    steering = [float(x) for x in pick_steering("mixed-null" if scenario == "mixed-null" else "mixed", rng,
                                                n_emotions, alpha)]
    args: dict[str, Any] = {"steering": steering}
    if scenario == "controls":
        ids = [int(x) for x in steering[0::2]]
        modes = [x for e in ids for x in (float(e), rng.choice(("add", "clamp")))]
        spare = [e for e in range(n_emotions) if e not in ids]
        if spare and rng.random() < 0.5:
            modes += [float(rng.choice(spare)), "ablate"]
        args.update(steering_modes=modes, steering_scope=rng.choice(("all", "prompt", "generated")))
    return args


def _run(llm: Any, agents: int, per_agent: int, scenario: str, job: dict[str, Any], seed: int) -> dict[str, Any]:
    """N agents, ``per_agent`` requests each, N in flight at every step; tokens and wall time."""
    from vllm import SamplingParams

    engine = llm.llm_engine
    rng = random.Random(seed)
    prompts = _prompts(llm.get_tokenizer(), agents * per_agent, job["prompt_tokens"], seed)
    queue = [(i, p) for i, p in enumerate(prompts)]
    in_flight, generated, finished = 0, 0, 0
    temperature = job.get("temperature", 0.0)
    started_at, began = time.time(), time.perf_counter()
    while queue or in_flight:
        while queue and in_flight < agents:
            index, prompt = queue.pop()
            # Sampled runs: request i of a seed draws with the same sampling seed in every scenario.
            sample_seed = random.Random(f"{seed}:{index}:sample").randrange(2**31) if temperature > 0 else None
            params = SamplingParams(temperature=temperature, seed=sample_seed, max_tokens=job["max_tokens"],
                                    ignore_eos=True,
                                    extra_args=_engine_args(scenario, rng, job["n_emotions"], job["alpha"]))
            engine.add_request(f"{scenario}-{seed}-{index}", {"prompt_token_ids": prompt}, params)
            in_flight += 1
        for output in engine.step():
            if output.finished:
                in_flight -= 1
                finished += 1
                generated += len(output.outputs[0].token_ids)
    wall = time.perf_counter() - began
    return {"scenario": scenario, "agents": agents, "requests": finished, "generated": generated,
            "wall_s": round(wall, 3), "tok_per_s": generated / wall, "started_at": round(started_at, 3),
            "ended_at": round(time.time(), 3)}


def engine_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Build one engine and run every (repeat, N, scenario) of ``job``, interleaved."""
    from vllm import LLM

    llm = LLM(**job["engine"])
    runs = []
    # Size the runs: two short calibrations per N (the first warms kernels that tune themselves on first use, as
    # a MoE engine's do, and reads low), then enough requests per agent for run_seconds at the second's pace.
    per_agent: dict[int, int] = {}
    for agents in job["agents"]:
        for attempt in range(2):
            probe = _run(llm, agents, 1, job["scenarios"][0], job, seed=10_000 + agents + attempt)
        wanted = job["run_seconds"] * probe["tok_per_s"] / (agents * job["max_tokens"])
        per_agent[agents] = max(1, math.ceil(wanted))
    for repeat in range(job["repeats"]):
        for agents in job["agents"]:
            for scenario in job["scenarios"]:
                run = _run(llm, agents, per_agent[agents], scenario, job, seed=job["seed"] + repeat)
                run.update(label=job["label"], repeat=repeat)
                runs.append(run)
                print(f"  [{job['label']}] repeat {repeat + 1}/{job['repeats']} N={agents:<3} {scenario:<5} "
                      f"{run['tok_per_s']:9.1f} tok/s over {run['wall_s']:.1f} s", flush=True)
    return runs


def run_engine_bench(*, model: str, vectors: str | None, agents: list[int], repeats: int, prompt_tokens: int,
                     max_tokens: int, alpha: float, seed: int, run_seconds: float, engine_kwargs: dict[str, Any],
                     compare_plain: bool, log_dir: str | Path, n_emotions: int = 6,
                     alpha_scale: str | None = None, scenarios: tuple[str, ...] = ("none", "mixed"),
                     temperature: float = 0.0) -> dict[str, Any]:
    """Engine-level runs, plugin on (``scenarios``: ``none`` first, then any of ``mixed`` and ``mixed-null``) and,
    with ``compare_plain``, plugin not loaded."""
    from emolab.core.models import resolve_model
    from emolab.serve.settings import ServeSettings

    check_temperature(temperature)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    engine = {"model": resolve_model(model), "seed": 0, "max_num_seqs": max(agents), **engine_kwargs}
    common = dict(engine=engine, agents=agents, repeats=repeats, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                  alpha=alpha, seed=seed, run_seconds=run_seconds, n_emotions=n_emotions, temperature=temperature)
    plan = []
    if vectors:
        env = ServeSettings(vectors=str(Path(vectors).resolve()), alpha_scale=alpha_scale).to_env()
        plan.append(("emolab", ["none", *(s for s in scenarios if s != "none")], env))
    if compare_plain:
        plan.append(("plain-vllm", ["plain"], {"VLLM_PLUGINS": ""}))
    runs = []
    with ClockLog(log_dir / "gpu-clocks.csv") as clocks:  # the card's clocks beside the ratios, where one is
        for label, scenarios, env in plan:
            runs += _engine_process(label, scenarios, env, common, log_dir)
    annotate(runs, clocks.samples())
    return {"runs": runs, "summary": summarize_engine_runs(runs)}


def _engine_process(label: str, scenarios: list[str], env: dict[str, str], common: dict[str, Any],
                    log_dir: Path) -> list[dict[str, Any]]:
    """One engine in its own process (plugin on or off by ``env``) running ``scenarios``; its runs."""
    job_path, out_path = log_dir / f"engine-{label}.job.json", log_dir / f"engine-{label}.out.json"
    job_path.write_text(json.dumps({**common, "label": label, "scenarios": scenarios}))
    # vLLM-CPU otherwise claims most of the RAM for its KV cache (the variable is ignored on CUDA).
    process_env = {"VLLM_CPU_KVCACHE_SPACE": "2", **os.environ, **env}
    with open(log_dir / f"engine-{label}.log", "w") as log:
        code = subprocess.call([sys.executable, "-m", "emolab.bench.engine", str(job_path), str(out_path)],
                               env=process_env, stdout=log, stderr=subprocess.STDOUT)
    if code:
        tail = (log_dir / f"engine-{label}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the {label} engine failed (exit {code}):\n{tail}")
    return json.loads(out_path.read_text())


def summarize_engine_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median tok/s per (scenario, N) and the ratios to none (same engine) and to plain."""
    import numpy as np

    medians: dict[tuple[str, int], float] = {}
    for key in {(r["scenario"], r["agents"]) for r in runs}:
        medians[key] = float(np.median([r["tok_per_s"] for r in runs if (r["scenario"], r["agents"]) == key]))
    rows = []
    for (scenario, agents), value in sorted(medians.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        none, plain = medians.get(("none", agents)), medians.get(("plain", agents))
        rows.append({
            "scenario": scenario, "agents": agents, "tok_per_s": value,
            "repeats": sum(1 for r in runs if (r["scenario"], r["agents"]) == (scenario, agents)),
            "per_repeat_ratio_vs_none": [
                round(r["tok_per_s"] / n["tok_per_s"], 4) for r in runs for n in runs
                if r["scenario"] == scenario and n["scenario"] == "none" and r["agents"] == n["agents"] == agents
                and r.get("repeat") == n.get("repeat") and scenario != "plain"],
            "spread": repeat_spread([r["tok_per_s"] for r in runs if (r["scenario"], r["agents"]) == (scenario, agents)]),
            "ratio_vs_none": value / none if none and scenario != "plain" else None,
            "ratio_vs_plain": value / plain if plain and scenario != "plain" else None,
        })
    return rows


if __name__ == "__main__":  # spawned engines (tensor parallelism) re-import this module: keep the guard
    with open(sys.argv[1]) as handle:
        job = json.load(handle)
    result = engine_job(job)
    with open(sys.argv[2], "w") as handle:
        json.dump(result, handle)
