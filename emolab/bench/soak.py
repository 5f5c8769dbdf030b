"""``emolab soak``: N agents for a long time against one server; does anything drift?

Agents send streamed chat requests back to back until the time is up, each with random steering
churn (a share unsteered, the rest a random blend), and a share of them disconnect mid-stream.
Every ``sample_s`` the soak samples the server process's RSS, GPU memory (``nvidia-smi``), and
emolab's own gauges on ``/metrics`` (active steering rows in the workers, steered requests in
flight). At the end it waits for the server to drain and checks:

* no errors and no 5xx;
* RSS and GPU memory flat after warm-up (every sample within ``flat_tolerance`` of the median);
* active steering rows and in-flight requests back to 0;
* no slowdown: decode tok/s in the last window >= ``min_speed_ratio`` x the second window's (the
  median over the requests that ended in each window of their own tok/s; the tok/s of all streams
  together is reported beside it, but arrivals, prefills and disconnects make it the noisier one).
"""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from emolab.api_client import AsyncSteeringClient
from emolab.bench.load import make_prompt, random_blend

__all__ = ["SoakConfig", "check_soak", "parse_emolab_metrics", "run_soak"]


@dataclass
class SoakConfig:
    base_url: str
    api_key: str = ""
    model: str = "emolab"
    server_pid: int | None = None  # RSS is sampled when known
    agents: int = 20
    duration_s: float = 600.0
    window_s: float = 60.0  # tok/s is compared between windows of this length
    sample_s: float = 10.0
    warmup_s: float | None = None  # samples before this are not judged (default: the first window)
    prompt_words: int = 40
    max_tokens: int = 128
    steer_share: float = 0.8
    disconnect_share: float = 0.2
    alpha: float = 1.0
    seed: int = 0
    flat_tolerance: float = 0.05
    min_speed_ratio: float = 0.97
    drain_timeout_s: float = 120.0


@dataclass
class _Tally:
    tokens: list[tuple[float, int]] = field(default_factory=list)  # (time since start, chunks with text)
    streams: list[tuple[float, float]] = field(default_factory=list)  # (end time, decode tok/s) per request
    requests: int = 0
    disconnects: int = 0
    errors: list[str] = field(default_factory=list)
    five_xx: int = 0


def parse_emolab_metrics(text: str) -> dict[str, float]:
    """Sum of each ``emolab_*`` sample in a Prometheus text body (per-worker samples added up)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(emolab_[a-z_]+)(\{[^}]*\})?\s+([-+0-9.eE]+)$", line.strip())
        if match:
            totals[match.group(1)] = totals.get(match.group(1), 0.0) + float(match.group(3))
    return totals


def _gpu_memory_mib() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return float(sum(float(x) for x in out.stdout.split()))


def _rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return None


async def _agent(client: AsyncSteeringClient, index: int, config: SoakConfig, deadline: float, began: float,
                 n_emotions: int, tally: _Tally) -> None:
    import openai

    rng = random.Random(config.seed * 1000 + index)
    while time.perf_counter() < deadline:
        steering = None
        if rng.random() < config.steer_share:
            steering = random_blend(rng, n_emotions, config.alpha)
        leave_after = rng.randint(1, max(1, config.max_tokens // 2)) if rng.random() < config.disconnect_share else None
        chunks, first, last = 0, 0.0, 0.0
        try:
            stream = client.stream_chat(make_prompt(rng, config.prompt_words), steering, max_tokens=config.max_tokens,
                                        temperature=0, extra_body={"ignore_eos": True})
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    chunks += 1
                    last = time.perf_counter() - began
                    first = first or last
                    tally.tokens.append((last, 1))
                if leave_after is not None and chunks >= leave_after:
                    tally.disconnects += 1
                    break  # closes the stream: the client goes away mid-response
            await stream.aclose()
            if chunks >= 8 and last > first:  # the request's own decode speed, free of arrival noise
                tally.streams.append((last, (chunks - 1) / (last - first)))
        except openai.APIStatusError as exc:
            tally.five_xx += exc.status_code >= 500
            tally.errors.append(f"HTTP {exc.status_code}: {str(exc)[:200]}")
        except Exception as exc:  # counted; the soak goes on
            tally.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        tally.requests += 1


async def _sample(http: Any, client: AsyncSteeringClient, config: SoakConfig, began: float,
                  tally: _Tally) -> dict[str, Any]:
    import httpx

    gauges: dict[str, float] = {}
    try:
        reply = await http.get(client.base_url.removesuffix("/v1") + "/metrics", headers=client._headers())
        if reply.status_code == 200:
            gauges = parse_emolab_metrics(reply.text)
    except httpx.HTTPError:
        pass
    return {
        "t_s": round(time.perf_counter() - began, 2), "rss_mib": _rss_mib(config.server_pid),
        "gpu_mib": _gpu_memory_mib(), "errors": len(tally.errors), "requests": tally.requests,
        "active_rows": gauges.get("emolab_worker_active_rows"),
        "steered_in_flight": gauges.get("emolab_steered_http_requests_in_flight"),
        "in_flight": gauges.get("emolab_http_requests_in_flight"),
    }


async def _soak(config: SoakConfig) -> dict[str, Any]:
    import httpx

    client = AsyncSteeringClient(config.base_url, api_key=config.api_key or None, model=config.model, timeout=600)
    tally, samples = _Tally(), []
    try:
        n_emotions = len(await client.emotions())
        async with httpx.AsyncClient(timeout=30) as http:
            began = time.perf_counter()
            deadline = began + config.duration_s

            async def sampler() -> None:
                while time.perf_counter() < deadline:
                    samples.append(await _sample(http, client, config, began, tally))
                    await asyncio.sleep(config.sample_s)

            sampling = asyncio.create_task(sampler())
            await asyncio.gather(*(_agent(client, i, config, deadline, began, n_emotions, tally)
                                   for i in range(config.agents)))
            load_ended = time.perf_counter() - began
            sampling.cancel()
            # Drain: the server should settle to no request in flight and no steering row in use.
            settle_by = time.perf_counter() + config.drain_timeout_s
            while True:
                samples.append(await _sample(http, client, config, began, tally))
                settled = samples[-1]["active_rows"] in (0, 0.0) and samples[-1]["in_flight"] in (0, 0.0)
                if settled or time.perf_counter() > settle_by:
                    break
                await asyncio.sleep(1.0)
    finally:
        await client.close()
    return {"samples": samples, "load_ended_s": round(load_ended, 2), "requests": tally.requests,
            "disconnects": tally.disconnects, "errors": len(tally.errors), "five_xx": tally.five_xx,
            "error_messages": tally.errors[:10],
            "windows": _windows(tally.tokens, tally.streams, config.window_s, load_ended)}


def _windows(tokens: list[tuple[float, int]], streams: list[tuple[float, float]], window_s: float,
             load_ended: float) -> list[dict[str, float]]:
    """Per consecutive window of the load (a last partial one is dropped): generated tok/s over all
    streams, and the median decode tok/s of the requests that ended in it (each stream's own speed,
    which arrivals, prefills and disconnects do not blur)."""
    count = int(load_ended // window_s)
    totals = np.zeros(count)
    for t, n in tokens:
        if int(t // window_s) < count:
            totals[int(t // window_s)] += n
    rows = []
    for k in range(count):
        speeds = [v for t, v in streams if int(t // window_s) == k]
        rows.append({"start_s": k * window_s, "tok_per_s": float(totals[k] / window_s),
                     "stream_tok_per_s_median": float(np.median(speeds)) if speeds else None,
                     "streams": len(speeds)})
    return rows


def check_soak(report: dict[str, Any], config: SoakConfig) -> dict[str, Any]:
    """The verdict: each check's measured values and whether it passed."""
    warmup = config.window_s if config.warmup_s is None else config.warmup_s
    judged = [s for s in report["samples"] if s["t_s"] >= warmup and s["t_s"] <= report["load_ended_s"]]

    def flat(key: str) -> dict[str, Any]:
        values = [s[key] for s in judged if s[key] is not None]
        if not values:
            return {"ok": None, "reason": "not sampled"}
        median = float(np.median(values))
        worst = max(abs(v - median) / median for v in values) if median else 0.0
        return {"ok": worst <= config.flat_tolerance, "median": round(median, 1), "max_deviation": round(worst, 4),
                "min": round(min(values), 1), "max": round(max(values), 1)}

    final = report["samples"][-1] if report["samples"] else {}
    windows = report["windows"]
    speed = aggregate = None
    if len(windows) >= 3 and windows[1]["stream_tok_per_s_median"] and windows[-1]["stream_tok_per_s_median"]:
        speed = windows[-1]["stream_tok_per_s_median"] / windows[1]["stream_tok_per_s_median"]
    if len(windows) >= 3 and windows[1]["tok_per_s"] > 0:
        aggregate = windows[-1]["tok_per_s"] / windows[1]["tok_per_s"]
    checks = {
        "no_errors": {"ok": report["errors"] == 0, "errors": report["errors"]},
        "no_5xx": {"ok": report["five_xx"] == 0, "five_xx": report["five_xx"]},
        "rss_flat": flat("rss_mib"),
        "gpu_memory_flat": flat("gpu_mib"),
        "rows_back_to_zero": {"ok": final.get("active_rows") in (0, 0.0) and final.get("in_flight") in (0, 0.0),
                              "active_rows": final.get("active_rows"), "in_flight": final.get("in_flight")},
        "no_slowdown": {"ok": None if speed is None else speed >= config.min_speed_ratio,
                        "stream_tok_per_s_last_over_second": None if speed is None else round(speed, 4),
                        "all_streams_tok_per_s_last_over_second": None if aggregate is None else round(aggregate, 4)},
    }
    return {"ok": all(c["ok"] is not False for c in checks.values()), "checks": checks}


def run_soak(config: SoakConfig) -> dict[str, Any]:
    report = asyncio.run(_soak(config))
    report["config"] = {k: v for k, v in asdict(config).items() if k != "api_key"}
    report["verdict"] = check_soak(report, config)
    return report
