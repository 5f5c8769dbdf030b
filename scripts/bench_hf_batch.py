#!/usr/bin/env python
"""The HF backend's continuous batching against its one-at-a-time worker: aggregate tok/s at N agents.

Two ``emolab serve --backend hf`` servers of the same model run side by side, started by this script:

* ``batched``: continuous batching (``--hf-max-batch``, default 32);
* ``serial``:  ``--hf-max-batch 1``, one ``model.generate`` call at a time (the backend before batching).

``emolab bench``'s agents drive each (``emolab.bench.run.bench_server``: streamed chat requests, temperature 0,
``ignore_eos``, fixed prompt and output lengths; ``mixed``: every request its own random blend of one or two
emotions, ``none``: unsteered), every N on both servers, repeat after repeat, interleaved so that drift and
other load on the host hit both alike. Prints one table (median tok/s of each, batched / serial, TTFT and
ITL medians) and writes ``OUTPUT/bench_hf_batch.json`` (config, summary, every run).

    python scripts/bench_hf_batch.py --model smollm2 --vectors vectors/smollm2 --output runs/hf-batch \
        --prompt-tokens 64 --max-tokens 64 --scenarios mixed --min-run-seconds 10 --torch-threads 1   # CPU
    python scripts/bench_hf_batch.py --model /tmp/qwen3-8b --vectors ref-bundle --load-format dummy \
        --dtype bfloat16 --max-model-len 2048 --output $OUT/hf_batch                  # one GPU (random weights)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from emolab.bench.config import BenchConfig
from emolab.bench.load import RunResult, not_measured
from emolab.bench.run import bench_server
from emolab.bench.servers import start_bench_server
from emolab.bench.tables import bench_frame
from emolab.serve.launch import free_port, stop_server

MODES = ("serial", "batched")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="model for both servers (alias, folder or hub id)")
    p.add_argument("--vectors", default="vectors/smollm2", help="bundle for both servers")
    p.add_argument("--output", required=True, help="folder for bench_hf_batch.json and the servers' logs")
    p.add_argument("--agents", default="1,8,20", help="comma-separated numbers of concurrent agents")
    p.add_argument("--scenarios", default="none,mixed", help="comma-separated: none, mixed, same")
    p.add_argument("--prompt-tokens", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--requests-per-agent", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--hf-max-batch", type=int, default=32, help="the batched server's --hf-max-batch")
    p.add_argument("--hf-max-batch-tokens", type=int, default=None, help="the batched server's --hf-max-batch-tokens")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--load-format", choices=["auto", "dummy"], default="auto",
                   help="dummy: random weights of the model's shape (a config folder without weights)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="CPU: the servers' intra-op threads (OMP_NUM_THREADS); 1 keeps a shared, busy host from "
                        "stalling them (threads that wait for each other at every op), the same for both servers")
    p.add_argument("--min-run-seconds", type=float, default=30.0,
                   help="a shorter (or client-bound) run is marked 'not a measurement' in the table")
    return p.parse_args(argv)


def server_args(args: argparse.Namespace, mode: str) -> list[str]:
    out = ["--device", args.device, "--load-format", args.load_format, "--log-level", "warning"]
    if mode == "serial":
        return [*out, "--hf-max-batch", "1"]
    out += ["--hf-max-batch", str(args.hf_max_batch)]
    if args.hf_max_batch_tokens:
        out += ["--hf-max-batch-tokens", str(args.hf_max_batch_tokens)]
    return out


def table(results: list[RunResult], min_seconds: float) -> tuple[list[dict], str]:
    """One row per (N, scenario): both servers' medians, batched / serial, and why a row is not a measurement."""
    frame = bench_frame(results)
    cell = {(r.label, r.scenario, r.agents): r for r in frame.itertuples()}
    rows, lines = [], []
    head = (f"{'N':>4} {'scenario':<8} {'serial tok/s':>13} {'batched tok/s':>14} {'batched/serial':>15} "
            f"{'TTFT p50 ms s/b':>17} {'ITL p50 ms s/b':>16}")
    lines += [head, "-" * len(head)]
    for (label, scenario, agents), batched in cell.items():
        if label != "batched" or (("serial", scenario, agents) not in cell):
            continue
        serial = cell[("serial", scenario, agents)]
        why = [w for w in (not_measured(results, m, scenario, agents, min_seconds) for m in MODES) if w]
        ratio = batched.tok_per_s / serial.tok_per_s if serial.tok_per_s else float("nan")
        rows.append({"agents": agents, "scenario": scenario, "serial_tok_per_s": serial.tok_per_s,
                     "batched_tok_per_s": batched.tok_per_s, "batched_over_serial": ratio,
                     "serial_ttft_p50_ms": serial.ttft_p50_ms, "batched_ttft_p50_ms": batched.ttft_p50_ms,
                     "serial_itl_p50_ms": serial.itl_p50_ms, "batched_itl_p50_ms": batched.itl_p50_ms,
                     "errors": int(serial.errors + batched.errors), "not_a_measurement": "; ".join(why) or None})
        lines.append(f"{agents:>4} {scenario:<8} {serial.tok_per_s:>13.1f} {batched.tok_per_s:>14.1f} "
                     f"{ratio:>15.2f} {serial.ttft_p50_ms:>8.0f}/{batched.ttft_p50_ms:<8.0f} "
                     f"{serial.itl_p50_ms:>7.1f}/{batched.itl_p50_ms:<8.1f}" + (f"  ({'; '.join(why)})" if why else ""))
    return rows, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.output)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    agents = [int(x) for x in args.agents.split(",")]
    scenarios = [s for s in args.scenarios.split(",") if s]
    base = BenchConfig(model="emolab", agents=agents, scenarios=scenarios, prompt_tokens=args.prompt_tokens,
                       max_tokens=args.max_tokens, requests_per_agent=args.requests_per_agent, repeats=1,
                       serve_model=args.model, serve_vectors=args.vectors, serve_backend="hf", dtype=args.dtype,
                       max_model_len=args.max_model_len, log_dir=str(out / "logs"), min_run_seconds=args.min_run_seconds)
    servers, startup = {}, {}

    def stopped(signum, frame) -> None:  # killed mid-run (the event loop would swallow an exception): servers first
        for proc, _, _ in servers.values():
            stop_server(proc)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stopped)
    if args.torch_threads:  # the servers inherit this environment
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.torch_threads)
    try:
        for mode in MODES:
            config = replace(base, server_args=server_args(args, mode))
            port = free_port()
            print(f"starting the {mode} server on port {port} ...", flush=True)
            proc, seconds = start_bench_server(config, mode, port, Path(base.log_dir))
            servers[mode], startup[mode] = (proc, f"http://127.0.0.1:{port}/v1", config), round(seconds, 1)
            said = [line for line in proc.log_path.read_text(errors="replace").splitlines()
                    if line.startswith("emolab serve: ") and "request" in line]
            print(f"  {mode} ready after {seconds:.1f} s: {said[-1] if said else '(no batching line)'}", flush=True)
            if mode == "batched" and not any("continuous batching" in line for line in said):
                raise SystemExit("the batched server does not batch (see its line above): no comparison to make")
        results: list[RunResult] = []
        began = time.perf_counter()
        for repeat in range(args.repeats):
            for mode in MODES:  # interleaved: each repeat runs every N and scenario on both servers
                _, url, config = servers[mode]
                results += bench_server(url, replace(config, seed=base.seed + repeat), mode, scenarios, agents)
    finally:
        for proc, _, _ in servers.values():
            stop_server(proc)
    rows, text = table(results, args.min_run_seconds)
    print(f"\nHF backend, {args.model} ({args.dtype}, load format {args.load_format}): aggregate tok/s, median of "
          f"{args.repeats} repeats, prompt ~{args.prompt_tokens} tokens, {args.max_tokens} generated per request\n"
          + text, flush=True)
    result = {"config": vars(args), "startup_s": startup, "bench_s": round(time.perf_counter() - began, 1),
              "summary": rows, "runs": [asdict(r) for r in results]}
    path = out / "bench_hf_batch.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
