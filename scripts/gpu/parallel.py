"""Steering under tensor, pipeline and data parallelism on 2 GPUs (vLLM 0.26, CUDA graphs on, bf16).

    python scripts/gpu/parallel.py tp|pp MODEL_DIR BUNDLE_DIR OUT_DIR [--seconds 30] [--repeats 2]

One mode per call (each fits a 10-minute device command). For each mode, two engines at that
parallelism, each in its own process:

* plugin on: a mixed batch (steered and unsteered requests together) and the same requests one by
  one (solo), then the throughput of N=64 agents, unsteered vs every request steered, interleaved,
  runs of about --seconds each (``emolab.bench.engine``);
* plugin not loaded (``VLLM_PLUGINS=""``): the unsteered requests one by one.

Verdict: the plugin is active in every worker (one "emolab steering on" line each, with the layers
that rank holds); unsteered output == plugin-not-loaded output (tokens); steered batch == steered
solo (tokens, and top-1 agreement where bf16 batching changes the rounding); under PP the chosen
layers are steered on whichever rank holds them. Both run offline ``vllm.LLM``. Data parallelism needs a
server (offline DP needs a launcher): scripts/gpu/dp.py, which reuses ``judge`` from here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "fastpath"))

from test_engine import MIXED, solo, strip  # noqa: E402

# On these hosts TP=2 dies in CUDA-graph capture without this (emolab.fastpath.server.all_reduce_flags).
TP_WORKAROUND = {"disable_custom_all_reduce": True, "compilation_config": {"pass_config": {"fuse_allreduce_rms": False}}}
JOB = r'''
import json, sys
sys.path.insert(0, sys.argv[3]); sys.path.insert(0, sys.argv[3] + "/tests/fastpath")
from vllm_job import params, prompt, result
from emolab.bench.engine import _run

def main():
    from vllm import LLM
    job = json.load(open(sys.argv[1]))
    llm = LLM(**job["engine"])
    out = {}
    for name, scenario in job["scenarios"].items():
        requests = scenario["requests"]
        if scenario["kind"] == "batch":
            outputs = llm.generate([prompt(r) for r in requests], [params(r) for r in requests], use_tqdm=False)
            out[name] = [result(o) for o in outputs]
        else:
            out[name] = [result(llm.generate([prompt(r)], [params(r)], use_tqdm=False)[0]) for r in requests]
    bench = job.get("bench")
    if bench:
        runs, probe = [], _run(llm, bench["agents"], 1, "none", bench, seed=999)
        per_agent = max(1, round(bench["run_seconds"] * probe["tok_per_s"] / (bench["agents"] * bench["max_tokens"])))
        for repeat in range(bench["repeats"]):
            for scenario in ("none", "mixed"):
                run = _run(llm, bench["agents"], per_agent, scenario, bench, seed=bench["seed"] + repeat)
                run["repeat"] = repeat
                runs.append(run)
                print("BENCH", json.dumps(run), flush=True)
        out["bench"] = runs
    json.dump(out, open(sys.argv[2], "w"))

if __name__ == "__main__":
    main()
'''


def engine_kwargs(mode: str, model: str, args: argparse.Namespace) -> dict:
    # Graphs captured for the batch sizes this script runs (up to 64): a shorter start than vLLM's 67 sizes.
    compilation = {"cudagraph_capture_sizes": [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]}
    kwargs = dict(model=model, load_format="dummy", dtype=args.dtype, seed=0, max_model_len=2048, max_num_seqs=64,
                  enable_prefix_caching=False, gpu_memory_utilization=0.85, enforce_eager=args.eager)
    if not args.eager:
        kwargs["compilation_config"] = compilation
    if mode == "tp":
        kwargs.update(tensor_parallel_size=args.world)
        if args.world > 1:  # see TP_WORKAROUND
            kwargs["disable_custom_all_reduce"] = True
            kwargs["compilation_config"] = {**compilation, **TP_WORKAROUND["compilation_config"]}
    elif mode == "pp":
        kwargs.update(pipeline_parallel_size=args.world)
    return kwargs


def run_engine(name: str, job: dict, out_dir: Path, env: dict) -> tuple[dict, str]:
    job_path, out_path, log_path = out_dir / f"{name}.job.json", out_dir / f"{name}.out.json", out_dir / f"{name}.log"
    job_path.write_text(json.dumps(job))
    (out_dir / "job.py").write_text(JOB)
    with open(log_path, "w") as log:
        code = subprocess.call([sys.executable, str(out_dir / "job.py"), str(job_path), str(out_path), str(REPO)],
                               env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    text = log_path.read_text(errors="replace")
    if code:
        raise SystemExit(f"{name} failed (exit {code}); the log's tail:\n{text[-4000:]}")
    return json.loads(out_path.read_text()), text


def top1_agreement(a: dict, b: dict) -> float:
    """Share of steps whose most likely token is the same in two runs of one request (logprobs, top 5)."""
    steps = list(zip(a["logprobs"], b["logprobs"], strict=False))
    same = sum(max(x, key=x.get) == max(y, key=y.get) for x, y in steps)
    return same / max(len(steps), 1)


def judge(on: dict, off: dict, requests: list[dict], log: str, bundle_layers: list[int]) -> dict:
    """``on``: plugin on, ``batch`` and ``solo`` of ``requests``; ``off``: plugin not loaded, the same
    requests with their steering removed, as a batch and one by one."""
    steering_lines = [line for line in log.splitlines() if "emolab steering on" in line]
    layers_per_worker = [json.loads(m.group(1)) for line in steering_lines
                         if (m := re.search(r"at layers (\[[0-9, ]*\])", line))]
    steered = [i for i, r in enumerate(requests) if r["steering"]]
    plain = [i for i, r in enumerate(requests) if not r["steering"]]

    def same(a: dict, b: dict) -> bool:
        return a["token_ids"] == b["token_ids"] and a["logprobs"] == b["logprobs"]

    return {
        "workers_with_plugin": len(steering_lines),
        "layers_per_worker": layers_per_worker,
        "every_chosen_layer_steered_somewhere": sorted({x for w in layers_per_worker for x in w}) == bundle_layers,
        "unsteered_equal_no_plugin_batch": all(same(on["batch"][i], off["batch"][i]) for i in plain),
        "unsteered_equal_no_plugin_solo": all(same(on["solo"][i], off["solo"][i]) for i in plain),
        "steered_differs_from_plain": all(on["solo"][i]["token_ids"] != off["solo"][i]["token_ids"] for i in steered),
        "batch_equals_solo": [on["batch"][i]["token_ids"] == on["solo"][i]["token_ids"] for i in range(len(requests))],
        "batch_solo_top1_agreement": [round(top1_agreement(on["batch"][i], on["solo"][i]), 4)
                                      for i in range(len(requests))],
    }


def bench_summary(runs: list[dict]) -> dict:
    import statistics

    ratios = [m["tok_per_s"] / n["tok_per_s"] for m in runs for n in runs
              if m["scenario"] == "mixed" and n["scenario"] == "none" and m["repeat"] == n["repeat"]]
    return {
        "agents": runs[0]["agents"], "seconds_per_run": [r["wall_s"] for r in runs],
        "none_tok_per_s": [round(r["tok_per_s"], 1) for r in runs if r["scenario"] == "none"],
        "mixed_tok_per_s": [round(r["tok_per_s"], 1) for r in runs if r["scenario"] == "mixed"],
        "mixed_over_none_per_repeat": [round(x, 4) for x in ratios],
        "mixed_over_none_median": round(statistics.median(ratios), 4) if ratios else None,
    }


def offline_mode(mode: str, model: str, bundle: str, out_dir: Path, args: argparse.Namespace) -> dict:
    from emolab.core.bundle import EmotionBundle

    requests = [{**r, "max_tokens": 24} for r in MIXED]
    engine = engine_kwargs(mode, model, args)
    bench = {"agents": args.agents, "run_seconds": args.seconds, "repeats": args.repeats, "prompt_tokens": 200,
             "max_tokens": args.max_tokens, "alpha": 1.0, "seed": 0, "n_emotions": 6}
    began = time.perf_counter()
    on, on_log = run_engine(f"{mode}-on", {"engine": engine, "bench": bench, "scenarios": {
        "batch": {"kind": "batch", "requests": requests}, "solo": {"kind": "sequence", "requests": solo(requests)},
    }}, out_dir, {"EMOLAB_VECTORS": bundle})
    off, _ = run_engine(f"{mode}-off", {"engine": engine, "scenarios": {
        "batch": {"kind": "batch", "requests": strip(requests)},
        "solo": {"kind": "sequence", "requests": strip(requests)}}}, out_dir, {"VLLM_PLUGINS": ""})
    verdict = judge(on, off, requests, on_log, EmotionBundle.load(bundle).chosen_layers)
    verdict["throughput_n64"] = bench_summary(on["bench"])
    verdict["wall_s"] = round(time.perf_counter() - began, 1)
    return verdict


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["tp", "pp"])
    parser.add_argument("model")
    parser.add_argument("bundle")
    parser.add_argument("out")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--world", type=int, default=2, help="GPUs per mode (1: a smoke run of the script itself)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--eager", action="store_true", help="smoke runs only: no torch.compile / graphs")
    parser.add_argument("--agents", type=int, default=64, help="throughput: agents in flight")
    parser.add_argument("--max-tokens", type=int, default=256, help="throughput: tokens generated per request")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    verdict = offline_mode(args.mode, args.model, args.bundle, out_dir, args)
    (out_dir / f"verdict-{args.mode}.json").write_text(json.dumps(verdict, indent=2))
    print(json.dumps(verdict, indent=2))


if __name__ == "__main__":
    main()
