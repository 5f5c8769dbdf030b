"""Data parallel on two GPUs (issue 28, item 1): ``emolab serve --data-parallel-size 2``, checked end to end.

    python scripts/gpu/dp.py run MODEL BUNDLE WORKDIR [options]   # everything, in order (scripts/gpu/dp.sh runs it)
    python scripts/gpu/dp.py status WORKDIR                       # what is done so far, and each verdict

``run`` takes about 17 minutes on two GPUs (Qwen3-8B shape, dummy bf16 weights, graphs on), longer than one
10-minute device call: dp.sh starts it detached in one call and follows it to the end in the next. Each phase
writes its JSON into WORKDIR as soon as it ends, and a line to WORKDIR/progress.log:

1. ``off``: plain vLLM at the same data parallelism with the plugin not loaded (``VLLM_PLUGINS=""``): the
   unsteered requests, one by one and all at once (the baseline).
2. ``checks``: ``emolab serve --data-parallel-size N`` (started once, kept for 3 and 4): one "emolab steering on"
   line per replica; the mixed requests one by one and all at once, then one by one pinned to each replica
   (vLLM's ``X-data-parallel-rank`` header); unsteered == plugin not loaded, batch == solo, every replica
   answers alike; pinned to a replica, exactly one worker (pid on ``/metrics``) counts every steered request,
   a different worker per replica.
3. ``bench``: ``emolab bench`` against it, unsteered and mixed, at each --agents (several client processes),
   with each worker's steered count over the run (every replica takes steered work).
4. ``soak``: ``emolab soak`` against it (--soak-agents for --soak-seconds): 0 errors, the soak's own flatness
   checks (API-server RSS, GPU memory), plus the RSS of every process of the server (engine cores, workers)
   sampled beside it, each flat within 5% after the first window; both replicas steered soak requests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "fastpath"))
sys.path.insert(0, str(REPO / "scripts" / "gpu"))

from parallel import judge  # noqa: E402
from test_engine import MIXED, solo, strip  # noqa: E402

from emolab.serve.launch import free_port, launch_server, session_processes, stop_server, wait_for_health  # noqa: E402

PHASES = ("off", "checks", "bench", "soak")


def note(work: Path, text: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {text}"
    print(line, flush=True)
    with open(work / "progress.log", "a") as log:
        log.write(line + "\n")


def engine_flags(args: argparse.Namespace) -> list[str]:
    """vLLM flags both servers share (the steered one gets them through --vllm-arg)."""
    flags = ["--max-model-len", str(args.max_model_len), "--load-format", args.load_format,
             "--no-enable-prefix-caching", "--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    return flags + (["--enforce-eager"] if args.eager else []) + args.extra.split()


def ask(url: str, request: dict, rank: int | None = None) -> dict:
    import httpx

    body = {"model": "m", "prompt": request["prompt"], "max_tokens": request["max_tokens"], "temperature": 0,
            "logprobs": 5, "ignore_eos": True}
    if request["steering"]:
        body["vllm_xargs"] = {"steering": request["steering"]}
    headers = {} if rank is None else {"X-data-parallel-rank": str(rank)}
    reply = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=600)
    reply.raise_for_status()
    choice = reply.json()["choices"][0]
    return {"token_ids": choice["text"], "logprobs": choice["logprobs"]["top_logprobs"]}


def at_once(url: str, requests: list[dict]) -> list[dict]:
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda r: ask(url, r), requests))


def worker_steered(url: str) -> dict[str, int]:
    import re

    import httpx

    text = httpx.get(url + "/metrics", timeout=60).text
    return {pid: int(float(v)) for pid, v in
            re.findall(r'^emolab_worker_steered_requests_total\{pid="(\d+)"\} (\S+)$', text, flags=re.M)}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {pid: after[pid] - before.get(pid, 0) for pid in after}


def phase_off(args: argparse.Namespace, work: Path, requests: list[dict]) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model, "--host",
               "127.0.0.1", "--port", str(port), "--served-model-name", "m", "--dtype", args.dtype,
               "--data-parallel-size", str(args.world), *engine_flags(args)]
    with open(work / "off.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "VLLM_PLUGINS": ""})
    server.log_path = work / "off.log"  # type: ignore[attr-defined]
    try:
        began = time.monotonic()
        wait_for_health(f"http://127.0.0.1:{port}", timeout=900, process=server)
        note(work, f"off: plain vLLM DP={args.world} up after {time.monotonic() - began:.0f} s")
        url = f"http://127.0.0.1:{port}"
        return {"solo": [ask(url, r) for r in strip(requests)], "batch": at_once(url, strip(requests))}
    finally:
        stop_server(server)


def start_steered(args: argparse.Namespace, work: Path):
    port = free_port()
    server = launch_server(vectors=args.bundle, model=args.model, port=port, backend="vllm", log_path=work / "on.log",
                           extra_args=["--dtype", args.dtype, "--served-model-name", "m", "--data-parallel-size",
                                       str(args.world), "--vllm-arg=" + " ".join(engine_flags(args))])
    began = time.monotonic()
    # never leave a half-started server (and its engines) behind
    wait_for_health(f"http://127.0.0.1:{port}", timeout=900, process=server, stop_on_failure=True)
    note(work, f"checks: emolab serve DP={args.world} up after {time.monotonic() - began:.0f} s")
    return server, f"http://127.0.0.1:{port}"


def phase_checks(args: argparse.Namespace, work: Path, url: str, requests: list[dict], off: dict) -> dict:
    from emolab.core.bundle import EmotionBundle

    on = {"solo": [ask(url, r) for r in solo(requests)], "batch": at_once(url, requests)}
    verdict = judge(on, off, requests, (work / "on.log").read_text(errors="replace"),
                    EmotionBundle.load(args.bundle).chosen_layers)
    steered = sum(1 for r in requests if r["steering"])
    pinned, counted = {}, {}
    for rank in range(args.world):
        before = worker_steered(url)
        pinned[rank] = [ask(url, r, rank) for r in requests]
        counted[rank] = {pid: n for pid, n in delta(worker_steered(url), before).items() if n}
    (work / "on.json").write_text(json.dumps({**on, "pinned": pinned}))
    # All at once over HTTP, which requests share a step on which replica is not controlled, and batch shape
    # alone moves logprobs (plain vLLM's batch vs solo differ by ~1e-5 on CPU): the batch is compared by tokens,
    # with the largest logprob difference beside it; one by one (same shapes) tokens and logprobs must be equal.
    plain = [i for i, r in enumerate(requests) if not r["steering"]]
    verdict["unsteered_equal_no_plugin_batch_tokens"] = all(
        on["batch"][i]["token_ids"] == off["batch"][i]["token_ids"] for i in plain)
    verdict["unsteered_batch_max_logprob_difference"] = max_logprob_difference(
        [on["batch"][i] for i in plain], [off["batch"][i] for i in plain])
    owners = [next(iter(c)) if len(c) == 1 else None for c in counted.values()]
    verdict.update({
        "replicas": args.world,
        "every_replica_answers_alike": all(pinned[r][i]["token_ids"] == on["solo"][i]["token_ids"]
                                           for r in pinned for i in range(len(requests))),
        "every_replica_top1_agreement_min": min(judge_top1(pinned[r][i], on["solo"][i])
                                                for r in pinned for i in range(len(requests))),
        "pinned_steered_counted_per_worker": {str(r): c for r, c in counted.items()},
        "each_replica_one_worker_counts_exactly": all(o is not None and counted[r][o] == steered
                                                      for r, o in enumerate(owners)),
        "replicas_have_distinct_workers": None not in owners and len(set(owners)) == args.world,
    })
    verdict["ok"] = bool(
        verdict["workers_with_plugin"] == args.world and verdict["unsteered_equal_no_plugin_batch_tokens"]
        and verdict["unsteered_equal_no_plugin_solo"] and verdict["steered_differs_from_plain"]
        and all(verdict["batch_equals_solo"]) and verdict["every_replica_answers_alike"]
        and verdict["each_replica_one_worker_counts_exactly"] and verdict["replicas_have_distinct_workers"])
    return verdict


def max_logprob_difference(a: list[dict], b: list[dict]) -> float | None:
    """Largest |difference| between the top-5 logprobs two runs give the same token at the same step."""
    worst = None
    for x, y in zip(a, b, strict=True):
        for step_x, step_y in zip(x["logprobs"], y["logprobs"], strict=False):
            for token in set(step_x) & set(step_y):
                diff = abs(step_x[token] - step_y[token])
                worst = diff if worst is None else max(worst, diff)
    return worst


def judge_top1(a: dict, b: dict) -> float:
    from parallel import top1_agreement

    return round(top1_agreement(a, b), 4)


def emolab_cli(work: Path, name: str, argv: list[str]) -> int:
    with open(work / f"{name}.txt", "w") as out:
        return subprocess.call([sys.executable, "-m", "emolab.cli", *argv], stdout=out, stderr=subprocess.STDOUT)


def phase_bench(args: argparse.Namespace, work: Path, url: str) -> dict:
    result = {}
    for agents, per_agent in zip(args.agents, args.requests_per_agent, strict=True):
        before = worker_steered(url)
        code = emolab_cli(work, f"bench_n{agents}", [
            "bench", "--base-url", url + "/v1", "--model", "m", "--agents", str(agents), "--scenarios", "none,mixed",
            "--prompt-tokens", "200", "--max-tokens", str(args.bench_max_tokens), "--requests-per-agent",
            str(per_agent), "--repeats", str(args.repeats), "--client-processes", str(args.client_processes),
            "--min-run-seconds", str(args.min_run_seconds), "--output", str(work / f"bench_n{agents}.json")])
        steered = {pid: n for pid, n in delta(worker_steered(url), before).items()}
        row: dict = {"exit": code, "steered_per_worker": steered,
                     "every_replica_steered": len(steered) == args.world and all(steered.values())}
        if code == 0:
            report = json.loads((work / f"bench_n{agents}.json").read_text())
            tok = {s["scenario"]: s["tok_per_s"] for s in report["summary"]}
            row.update(tok_per_s={k: round(v, 1) for k, v in tok.items()},
                       errors=sum(r["errors"] for r in report["runs"]), not_a_measurement=report["not_a_measurement"],
                       mixed_over_none=round(tok["mixed"] / tok["none"], 4) if tok.get("none") else None)
        result[str(agents)] = row
        note(work, f"bench N={agents}: {json.dumps({k: v for k, v in row.items() if k != 'not_a_measurement'})}")
    return result


def sample_rss(pid: int, stop: threading.Event, every: float, into: list) -> None:
    """RSS of the server and every process under it (engine cores, workers), by pid and name."""
    import psutil

    began = time.monotonic()
    while not stop.is_set():
        row = {"t_s": round(time.monotonic() - began, 1)}
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                try:
                    row[f"{proc.pid} {proc.name()}"] = round(proc.memory_info().rss / 2**20, 1)
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        into.append(row)
        stop.wait(every)


def flat_rss(samples: list[dict], warmup_s: float, tolerance: float = 0.05) -> dict:
    out = {}
    keys = {k for row in samples for k in row if k != "t_s"}
    for key in sorted(keys):
        values = [row[key] for row in samples if row["t_s"] >= warmup_s and key in row]
        if len(values) < 3:
            continue
        median = statistics.median(values)
        worst = max(abs(v - median) / median for v in values) if median else 0.0
        out[key] = {"median_mib": median, "min": min(values), "max": max(values), "max_deviation": round(worst, 4),
                    "ok": worst <= tolerance}
    return out


def phase_soak(args: argparse.Namespace, work: Path, url: str, server_pid: int) -> dict:
    before = worker_steered(url)
    samples: list[dict] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(server_pid, stop, 10.0, samples), daemon=True)
    sampler.start()
    try:
        code = emolab_cli(work, "soak", [
            "soak", "--base-url", url + "/v1", "--model", "m", "--server-pid", str(server_pid),
            "--agents", str(args.soak_agents), "--duration", str(args.soak_seconds), "--window", str(args.soak_window),
            "--sample-every", "10", "--max-tokens", str(args.soak_max_tokens), "--prompt-words", "150",
            "--output", str(work / "soak_report.json")])
    finally:
        stop.set()
        sampler.join()
    (work / "soak_rss.json").write_text(json.dumps(samples))
    steered = delta(worker_steered(url), before)
    rss = flat_rss(samples, args.soak_window)
    report = work / "soak_report.json"
    soak = json.loads(report.read_text()) if report.is_file() else {}
    verdict = {"exit": code, "soak_verdict": soak.get("verdict"), "requests": soak.get("requests"),
               "errors": soak.get("errors"), "windows_tok_per_s": [round(w["tok_per_s"], 1) for w in soak.get("windows", [])],
               "steered_per_worker": steered, "every_replica_steered": len(steered) == args.world and all(steered.values()),
               "rss_per_process": rss, "every_process_rss_flat": bool(rss) and all(r["ok"] for r in rss.values())}
    verdict["ok"] = bool(code == 0 and (soak.get("verdict") or {}).get("ok") and verdict["every_replica_steered"]
                         and verdict["every_process_rss_flat"])
    return verdict


def run(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    requests = [{**r, "max_tokens": 24} for r in MIXED]
    note(work, f"run: DP={args.world}, model {args.model}, bundle {args.bundle}")
    off = phase_off(args, work, requests)
    (work / "off.json").write_text(json.dumps(off))
    server, url = start_steered(args, work)
    try:
        for name, job in (("checks", lambda: phase_checks(args, work, url, requests, off)),
                          ("bench", lambda: phase_bench(args, work, url)),
                          ("soak", lambda: phase_soak(args, work, url, server.pid))):
            if name == "soak" and args.soak_seconds <= 0:
                continue
            began = time.monotonic()
            result = job()
            result["wall_s"] = round(time.monotonic() - began, 1)
            (work / f"{name}.json").write_text(json.dumps(result, indent=2))
            note(work, f"{name}: done in {result['wall_s']} s, ok={result.get('ok')}")
    finally:
        stop_server(server)
        left = session_processes(server.pid)
        note(work, f"run: finished; steered server stopped ({len(left)} processes left)")


def status(work: Path) -> None:
    print((work / "progress.log").read_text() if (work / "progress.log").is_file() else "(no progress yet)")
    for name in PHASES[1:]:
        path = work / f"{name}.json"
        if path.is_file():
            print(f"--- {name}")
            for key, value in json.loads(path.read_text()).items():
                print(f"{key}: {json.dumps(value)[:700]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("run")
    p.add_argument("model")
    p.add_argument("bundle")
    p.add_argument("work")
    p.add_argument("--world", type=int, default=2, help="engine replicas (one GPU each)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--load-format", default="dummy")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--eager", action="store_true", help="dry runs only: no torch.compile / graphs")
    p.add_argument("--extra", default="", help="more vLLM flags for both servers, one string")
    p.add_argument("--agents", type=lambda s: [int(x) for x in s.split(",")], default=[64, 256])
    p.add_argument("--requests-per-agent", type=lambda s: [int(x) for x in s.split(",")], default=[16, 10],
                   help="one per --agents value (runs of ~30 s or more at each)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--client-processes", type=int, default=8)
    p.add_argument("--bench-max-tokens", type=int, default=256)
    p.add_argument("--min-run-seconds", type=float, default=30.0)
    p.add_argument("--soak-seconds", type=float, default=600.0, help="0: no soak")
    p.add_argument("--soak-agents", type=int, default=40)
    p.add_argument("--soak-window", type=float, default=60.0)
    p.add_argument("--soak-max-tokens", type=int, default=256)
    s = sub.add_parser("status")
    s.add_argument("work")
    args = parser.parse_args()
    if args.step == "status":
        status(Path(args.work))
    else:
        run(args)


if __name__ == "__main__":
    main()
