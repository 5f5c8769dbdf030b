"""The load generator of ``emolab bench``: N simulated agents against a steering server.

Each agent sends chat requests one after another (streaming, ``ignore_eos``, fixed prompt and
output lengths) through the ``openai`` async client. Scenarios pick each request's steering:

* ``none``  no steering (the baseline every ratio is taken against, same server, same run)
* ``same``  every request the same emotion and alpha
* ``mixed`` every request a random mix of one or two emotions with random alphas (seeded)
* ``mixed-null`` the same blends as ``mixed`` with every alpha a millionth as large: every part of the steering
  path runs (validation, cache salts, a row per blend, the per-token gather and add) but the text stays the
  unsteered text. Against ``none`` it is what the steering *code* costs; ``mixed`` against it is what making
  *other text* costs (other tokens, other activations: on dummy weights, where the unsteered model repeats one
  token, other data can change the GPU's power draw and clocks)
* ``churn`` mixed steering, and agents start late and stop early at random (requests join and
  leave the running batch all the time); its baseline is ``churn-none``, the same arrivals unsteered,
  which the bench adds by itself

Agents may be spread over several client processes (``emolab.bench.clients``) so that the client
is not the bottleneck at N = 64-256; ``AgentStats`` of the parts merge into one ``RunResult``.

The bench tells the truth about itself: every run records its client processes' CPU time (and, on
Linux, the time they waited for a CPU: a client starved by a busy host is as much the bottleneck as one
that computes all the time), and ``measurement_problems`` says when a run measured the client rather than
the server (its busiest client process was on or waiting for a CPU >= ``CLIENT_BOUND_SHARE`` of the run)
or ran too short to read (under ``MIN_RUN_SECONDS``); a ratio over such a run is not a measurement
(``not_measured``).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emolab.api_client import AsyncSteeringClient

__all__ = ["BASELINE", "CLIENT_BOUND_SHARE", "MIN_RUN_SECONDS", "NULL_SCALE", "SCENARIOS", "AgentStats", "RunResult",
           "calibrate_prompt_words", "make_prompt", "measurement_problems", "not_measured", "one_request",
           "pick_steering", "random_blend", "repeat_spread", "run_agents", "run_scenario", "text_digest", "to_result"]

SCENARIOS = ("none", "same", "mixed", "mixed-null", "churn", "churn-none")
NULL_SCALE = 1e-6  # mixed-null: the alphas of mixed scaled down until they change no token
# Each scenario's ratio is taken against the unsteered run with the same arrival pattern.
BASELINE = {"none": "none", "same": "none", "mixed": "none", "mixed-null": "none", "churn": "churn-none",
            "churn-none": "churn-none"}
MIN_RUN_SECONDS = 30.0  # a shorter run is dominated by start and tail: not a measurement
CLIENT_BOUND_SHARE = 0.9  # a client process wanting a CPU this share of the run's wall time was the bottleneck
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
    client_processes: int = 1
    client_cpu_s: float = 0.0  # CPU time (user + system) of every client process during the run, summed
    client_cpu_wait_s: float = 0.0  # time they were ready to run but waited for a CPU (Linux), summed
    client_cpu_share: float = 0.0  # the busiest client process's CPU + wait seconds per second of its run
    content_chunks: int = 0  # streamed chunks that carried text (fewer than tokens: the server merged or held some)
    completion_chars: int = 0  # characters of text received (per token, it says what kind of tokens were made)
    text_digest: str = ""  # one hash of every request's text: equal digests = the same text, request by request
    started_at: float = 0.0  # wall clock (time.time()) of the run's start and end: to align with logs of
    ended_at: float = 0.0  # the card's clocks and power (emolab.bench.gpu_clocks)


def repeat_spread(rates: list[float]) -> float | None:
    """How far one row's repeats lie apart: (max - min) / median of their tok/s; None with one repeat."""
    return (max(rates) - min(rates)) / float(np.median(rates)) if len(rates) > 1 and min(rates) > 0 else None


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
    blend = random_blend(rng, n_emotions, alpha)
    if scenario == "mixed-null":  # the same draws as mixed (same rng calls), scaled down
        blend = [x if k % 2 == 0 else x * NULL_SCALE for k, x in enumerate(blend)]
    return blend


def random_blend(rng: random.Random, n_emotions: int, alpha: float) -> list[float]:
    """One or two distinct emotions (ids), each with an alpha drawn uniformly from [-alpha, alpha]."""
    picks = rng.sample(range(n_emotions), k=rng.choice((1, 2)))
    return [x for e in picks for x in (e, round(rng.uniform(-alpha, alpha), 3))]


async def one_request(client: AsyncSteeringClient, prompt: str, steering: list[float] | None, max_tokens: int,
                      stats: AgentStats, temperature: float = 0.0, sample_seed: int | None = None,
                      key: str | None = None) -> None:
    """One streamed chat request of fixed length (``ignore_eos``); its timings go into ``stats`` (and, under
    ``key``, a hash of its text). Greedy unless ``temperature`` > 0, then sampled with ``sample_seed``."""
    start = time.perf_counter()
    last = None
    text = hashlib.sha1()
    sampling = {"temperature": temperature, **({"seed": sample_seed} if temperature > 0 else {})}
    async for chunk in client.stream_chat(prompt, steering, max_tokens=max_tokens, **sampling,
                                          extra_body={"ignore_eos": True}):
        now = time.perf_counter()
        if chunk.choices and chunk.choices[0].delta.content:
            stats.chunks += 1
            stats.chars += len(chunk.choices[0].delta.content)
            text.update(chunk.choices[0].delta.content.encode())
            if last is None:
                stats.ttft.append(now - start)
            else:
                stats.itl.append(now - last)
            last = now
        if chunk.usage is not None:
            stats.completion_tokens += chunk.usage.completion_tokens
            stats.prompt_tokens.append(chunk.usage.prompt_tokens)
    if key is not None:
        stats.texts[key] = text.hexdigest()


@dataclass
class AgentStats:
    """What a group of agents measured; groups from several client processes merge into one run."""

    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: list[int] = field(default_factory=list)
    agent_rates: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    started: float = 0.0  # time.time() of the first agent's start and the last agent's end
    ended: float = 0.0
    cpu_s: float = 0.0  # the client processes' CPU time during the run (summed over processes)
    cpu_wait_s: float = 0.0  # ... and the time they waited for a CPU (summed)
    cpu_share: float = 0.0  # the busiest process's CPU + wait seconds per wall second
    processes: int = 1
    chunks: int = 0  # streamed chunks that carried text, and their characters
    chars: int = 0
    texts: dict[str, str] = field(default_factory=dict)  # "agent:request" -> hash of the text it received

    def merge(self, other: AgentStats) -> AgentStats:
        return AgentStats(self.ttft + other.ttft, self.itl + other.itl,
                          self.completion_tokens + other.completion_tokens, self.prompt_tokens + other.prompt_tokens,
                          self.agent_rates + other.agent_rates, self.errors + other.errors,
                          self.requests + other.requests, min(self.started, other.started),
                          max(self.ended, other.ended), self.cpu_s + other.cpu_s, self.cpu_wait_s + other.cpu_wait_s,
                          max(self.cpu_share, other.cpu_share), self.processes + other.processes,
                          self.chunks + other.chunks, self.chars + other.chars, {**self.texts, **other.texts})


async def run_agents(client: AsyncSteeringClient, scenario: str, agent_ids: range, *, requests_per_agent: int,
                     prompt_words: int, max_tokens: int, alpha: float, n_emotions: int, seed: int,
                     temperature: float = 0.0) -> AgentStats:
    """The agents ``agent_ids`` of one run, concurrently; each sends its requests one after another (greedy, or
    sampled at ``temperature`` with a seed per request that every scenario of ``seed`` shares)."""
    stats = AgentStats()
    rng_master = random.Random(seed)
    seeds = [rng_master.random() for _ in range(max(agent_ids, default=-1) + 1)]  # agent i's seed: any slicing

    async def agent(index: int) -> None:
        # Prompts and arrivals draw from one generator, steering from another: every scenario of a seed sends
        # the same prompts at the same times (mixed-null's text can be compared with none's, churn's with churn-none's).
        rng = random.Random(seeds[index] + index)
        steering_rng = random.Random(f"{seeds[index]}:{index}:steering")
        sample_rng = random.Random(f"{seeds[index]}:{index}:sample")
        count = requests_per_agent
        if scenario.startswith("churn"):  # join late, leave early: the batch composition keeps changing
            await asyncio.sleep(rng.uniform(0, 0.5 * requests_per_agent))
            count = rng.randint(1, 2 * requests_per_agent)
        before = stats.completion_tokens
        began = time.perf_counter()
        for k in range(count):
            steering = pick_steering(scenario, steering_rng, n_emotions, alpha)
            try:
                await one_request(client, make_prompt(rng, prompt_words), steering, max_tokens, stats,
                                  temperature, sample_rng.randrange(2**31), key=f"{index}:{k}")
            except Exception as exc:  # counted and reported, the other agents go on
                stats.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            stats.requests += 1
        stats.agent_rates.append((stats.completion_tokens - before) / max(time.perf_counter() - began, 1e-9))

    cpu, wait = time.process_time(), _cpu_wait()  # is this client process the bottleneck?
    stats.started = time.time()
    await asyncio.gather(*(agent(i) for i in agent_ids))
    stats.ended = time.time()
    stats.cpu_s, stats.cpu_wait_s = time.process_time() - cpu, _cpu_wait() - wait
    stats.cpu_share = (stats.cpu_s + stats.cpu_wait_s) / max(stats.ended - stats.started, 1e-9)
    return stats


def _cpu_wait() -> float:
    """Seconds this process's main thread has spent ready to run but waiting for a CPU (0 where unknown)."""
    try:
        with open("/proc/self/schedstat") as handle:  # on-CPU ns, run-queue wait ns, time slices
            return int(handle.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def to_result(stats: AgentStats, *, label: str, scenario: str, agents: int) -> RunResult:
    wall = max(stats.ended - stats.started, 1e-9)
    return RunResult(
        label=label, scenario=scenario, agents=agents, requests=stats.requests, errors=len(stats.errors),
        wall_s=round(wall, 3), completion_tokens=stats.completion_tokens,
        prompt_tokens_mean=float(np.mean(stats.prompt_tokens)) if stats.prompt_tokens else float("nan"),
        tok_per_s=stats.completion_tokens / wall,
        per_agent_tok_per_s=float(np.mean(stats.agent_rates)) if stats.agent_rates else 0.0,
        ttft_p50_ms=pct(stats.ttft, 50), ttft_p99_ms=pct(stats.ttft, 99),
        itl_p50_ms=pct(stats.itl, 50), itl_p99_ms=pct(stats.itl, 99), error_messages=stats.errors[:5],
        client_processes=stats.processes, client_cpu_s=round(stats.cpu_s, 3), client_cpu_wait_s=round(stats.cpu_wait_s, 3),
        client_cpu_share=round(stats.cpu_share, 3), content_chunks=stats.chunks, completion_chars=stats.chars,
        text_digest=text_digest(stats.texts), started_at=round(stats.started, 3), ended_at=round(stats.ended, 3),
    )


def text_digest(texts: dict[str, str]) -> str:
    """A short hash over the requests' text hashes, in request order (not completion order); "" for none."""
    if not texts:
        return ""
    return hashlib.sha256("\n".join(f"{k}={v}" for k, v in sorted(texts.items())).encode()).hexdigest()[:16]


def measurement_problems(run: RunResult, min_seconds: float = MIN_RUN_SECONDS) -> list[str]:
    """Why a run measured the client or nothing at all ([] when it is a measurement of the server)."""
    problems = []
    if run.client_cpu_share >= CLIENT_BOUND_SHARE:
        problems.append(f"client-bound (a client process was on or waiting for a CPU {run.client_cpu_share:.0%} of "
                        "the run; more --client-processes, or a host with cores to spare)")
    if run.wall_s < min_seconds:
        problems.append(f"too short ({run.wall_s:.1f} s < {min_seconds:g} s)")
    return problems


def not_measured(runs: list[RunResult], label: str, scenario: str, agents: int,
                 min_seconds: float = MIN_RUN_SECONDS) -> str | None:
    """Why the ratio of (label, scenario, N) is not a measurement, or None: a problem of one of its runs,
    or of its baseline's (``BASELINE``), makes the ratio a figure of the client, not of the server."""
    scenarios = {scenario, BASELINE[scenario]}
    found: list[str] = []
    for run in runs:
        if run.label == label and run.agents == agents and run.scenario in scenarios:
            found += [p.split(" (")[0] for p in measurement_problems(run, min_seconds)]
    return "not a measurement: " + " / ".join(sorted(set(found))) if found else None


async def run_scenario(client: AsyncSteeringClient, scenario: str, agents: int, *, label: str,
                       **kwargs: Any) -> RunResult:
    """``agents`` concurrent agents from this process; one ``RunResult``."""
    stats = await run_agents(client, scenario, range(agents), **kwargs)
    return to_result(stats, label=label, scenario=scenario, agents=agents)


async def calibrate_prompt_words(client: AsyncSteeringClient, prompt_tokens: int) -> int:
    """Words per prompt so that the chat prompt is about ``prompt_tokens`` tokens for this tokenizer."""
    probe = 100
    reply = await client.chat_completion(make_prompt(random.Random(0), probe), max_tokens=1)
    base = await client.chat_completion(make_prompt(random.Random(0), 1), max_tokens=1)
    per_word = (reply.usage.prompt_tokens - base.usage.prompt_tokens) / (probe - 1)
    return max(1, round((prompt_tokens - base.usage.prompt_tokens) / max(per_word, 1e-6)))
