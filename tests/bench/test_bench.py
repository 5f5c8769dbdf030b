"""`emolab bench` smoke run on the CPU vLLM backend: it starts the servers itself, runs every
scenario at tiny scale and reports. No timing is asserted; token counts and error counts are exact."""

from __future__ import annotations

import json
import random
import time

import pytest

from emolab.bench import SCENARIOS, summarize_runs
from emolab.bench.load import make_prompt, pick_steering

pytest.importorskip("vllm")


def test_pick_steering_is_seeded_and_well_formed():
    from emolab.core.steering import parse_steering

    emotions = ["anger", "joy", "sadness", "disgust", "fear", "surprise"]
    assert pick_steering("none", random.Random(0), 6, 1.0) is None
    assert pick_steering("churn-none", random.Random(0), 6, 1.0) is None
    assert pick_steering("same", random.Random(0), 6, 1.5) == [0, 1.5]
    for scenario in ("mixed", "churn"):
        first = [pick_steering(scenario, random.Random(7), 6, 2.0) for _ in range(3)]
        assert first == [pick_steering(scenario, random.Random(7), 6, 2.0) for _ in range(3)]
        for steering in first:
            pairs = parse_steering(steering, emotions)  # valid against the server contract
            assert 1 <= len(pairs) <= 2 and all(abs(a) <= 2.0 for _, a in pairs)
    assert make_prompt(random.Random(1), 5) == make_prompt(random.Random(1), 5)


def test_mixed_null_is_mixed_scaled_down():
    from emolab.bench.load import NULL_SCALE

    for seed in range(20):
        mixed = pick_steering("mixed", random.Random(seed), 6, 2.0)
        null = pick_steering("mixed-null", random.Random(seed), 6, 2.0)
        assert null[0::2] == mixed[0::2]  # the same emotions ...
        assert null[1::2] == [a * NULL_SCALE for a in mixed[1::2]]  # ... a millionth of the push
        assert all(a != 0 for a in null[1::2])  # still steered: every part of the steering path runs


@pytest.mark.slow
@pytest.mark.vllm
def test_bench_smoke_against_cpu_vllm(tmp_path, smollm2_path, smollm2_bundle_path):
    from emolab.cli import main

    out = tmp_path / "bench.json"
    code = main([
        "bench", "--serve-model", str(smollm2_path), "--serve-vectors", str(smollm2_bundle_path),
        "--model", "smollm2", "--dtype", "float32", "--max-model-len", "512",
        "--server-arg=--enforce-eager", "--server-arg-plain=--enforce-eager", "--compare-plain",
        "--agents", "4", "--scenarios", "none,same,mixed,mixed-null,churn", "--prompt-tokens", "32", "--max-tokens", "4",
        "--requests-per-agent", "1", "--repeats", "1", "--output", str(out), "--log-dir", str(tmp_path / "logs"),
        "--client-processes", "2",  # the agents of each run split over two client processes, merged
        "--api-server-count", "2",  # the same front end for emolab and plain vLLM: two API servers each
    ])
    assert code == 0
    for label in ("emolab", "plain-vllm"):
        log = (tmp_path / "logs" / f"{label}.log").read_text()
        assert "Started 2 API server processes" in log, (label, log[-2000:])
    report = json.loads(out.read_text())
    assert set(report["startup_s"]) == {"emolab", "plain-vllm"}
    rows = {(r["label"], r["scenario"]): r for r in report["summary"]}
    assert set(rows) == {("emolab", s) for s in SCENARIOS} | {("plain-vllm", "none")}
    for run in report["runs"]:
        assert run["errors"] == 0, run["error_messages"]
        assert run["completion_tokens"] == 4 * run["requests"]  # ignore_eos: every request yields max_tokens
        if not run["scenario"].startswith("churn"):
            assert run["requests"] == 4
    assert rows[("emolab", "none")]["ratio_vs_unsteered"] == 1.0
    assert rows[("emolab", "churn-none")]["ratio_vs_unsteered"] == 1.0  # churn is judged against churn-none
    assert rows[("emolab", "mixed")]["ratio_vs_plain_vllm"] is not None
    # mixed-null runs every part of the steering path but writes the unsteered text (same prompts, same seed)
    by_scenario = {r["scenario"]: r for r in report["runs"] if r["label"] == "emolab"}
    assert by_scenario["mixed-null"]["completion_chars"] == by_scenario["none"]["completion_chars"]
    assert by_scenario["mixed-null"]["text_digest"] == by_scenario["none"]["text_digest"] != ""
    assert all(r["prompt_tokens_mean"] > 20 for r in report["summary"])
    assert summarize_runs([]) == []


def test_split_agents_covers_every_agent_once():
    from emolab.bench.clients import split_agents

    for agents, parts in ((1, 4), (4, 2), (7, 3), (64, 4), (256, 6)):
        slices = split_agents(agents, parts)
        assert [i for piece in slices for i in piece] == list(range(agents))
        assert len(slices) == min(agents, parts) and all(len(piece) > 0 for piece in slices)
        assert max(map(len, slices)) - min(map(len, slices)) <= 1


def test_agent_stats_merge_keeps_every_measurement():
    from emolab.bench.load import AgentStats, to_result

    a = AgentStats(ttft=[0.1], itl=[0.01, 0.02], completion_tokens=10, prompt_tokens=[30], agent_rates=[5.0],
                   requests=2, started=100.0, ended=102.0)
    b = AgentStats(ttft=[0.3], itl=[0.03], completion_tokens=6, prompt_tokens=[34], agent_rates=[3.0],
                   errors=["x"], requests=1, started=100.5, ended=104.0)
    merged = a.merge(b)
    assert (merged.completion_tokens, merged.requests, merged.started, merged.ended) == (16, 3, 100.0, 104.0)
    result = to_result(merged, label="l", scenario="mixed", agents=2)
    assert result.tok_per_s == 16 / 4.0 and result.errors == 1 and result.per_agent_tok_per_s == 4.0
    assert result.prompt_tokens_mean == 32.0


@pytest.mark.slow
@pytest.mark.vllm
def test_sampled_runs_draw_the_same_seeds_in_every_scenario(vllm_server):
    """--temperature: every request samples with its own seed, the same in every scenario of a bench seed, so
    unsteered text varies as a real model's does and mixed-null still writes exactly the unsteered text."""
    import asyncio

    from conftest import VLLM_KEY

    from emolab.api_client import AsyncSteeringClient
    from emolab.bench.load import run_scenario

    async def runs():
        client = AsyncSteeringClient(vllm_server, api_key=VLLM_KEY)
        common = dict(requests_per_agent=2, prompt_words=12, max_tokens=8, alpha=4.0, n_emotions=6, seed=3)
        try:
            greedy = await run_scenario(client, "none", 3, label="t", **common)
            sampled = [await run_scenario(client, scenario, 3, label="t", temperature=0.9, **common)
                       for scenario in ("none", "none", "mixed-null", "mixed")]
        finally:
            await client.close()
        return greedy, sampled

    greedy, (first, again, null, mixed) = asyncio.run(runs())
    for run in (greedy, first, again, null, mixed):
        assert run.errors == 0 and run.completion_tokens == 3 * 2 * 8, run.error_messages
        assert len(run.text_digest) == 16
        assert run.started_at < run.ended_at and run.ended_at - run.started_at == pytest.approx(run.wall_s, abs=2e-3)
    assert first.text_digest == again.text_digest  # the same seeds: the same text, request by request
    assert null.text_digest == first.text_digest  # every part of the steering path, the unsteered sampled text
    assert first.text_digest != greedy.text_digest  # the temperature reached the server
    assert mixed.text_digest != first.text_digest  # steering at alpha up to 4 changes what is sampled


def test_bench_refuses_a_temperature_out_of_range(capsys):
    from emolab.cli import main

    for bad in ("-0.5", "nan", "3"):
        with pytest.raises(SystemExit) as exit_:
            main(["bench", "--base-url", "http://127.0.0.1:9/v1", "--temperature", bad])
        assert exit_.value.code == 2
        assert f"--temperature must be between 0 and 2, got {float(bad)}" in capsys.readouterr().err


def test_library_callers_get_the_same_temperature_check(tmp_path):
    """BenchConfig and the engine bench refuse the temperature before a server or an engine starts."""
    from emolab.bench import BenchConfig
    from emolab.bench.config import BenchError
    from emolab.bench.engine import run_engine_bench

    with pytest.raises(BenchError, match="temperature must be between 0 and 2, got 2.5") as err:
        run_engine_bench(model="x", vectors=None, agents=[1], repeats=1, prompt_tokens=8, max_tokens=8, alpha=1.0,
                         seed=0, run_seconds=1.0, engine_kwargs={}, compare_plain=True, log_dir=tmp_path / "logs",
                         temperature=2.5)
    assert err.value.setting == "temperature" and not (tmp_path / "logs").exists()
    with pytest.raises(BenchError, match="got -1"):
        BenchConfig(temperature=-1).checked_temperature()


@pytest.mark.slow
@pytest.mark.vllm
def test_the_warm_up_meets_the_measured_length_once(vllm_server, monkeypatch):
    """Before the measured runs: one request of the measured length (an eager backend meets its longest sequences
    once), then short ones in parallel; the measured runs follow, each of the measured length."""
    from conftest import VLLM_KEY

    import emolab.bench.run as bench_run
    from emolab.bench import BenchConfig

    calls = []
    real = bench_run.run_scenario

    async def recording(client, scenario, agents, **kwargs):
        calls.append((kwargs["label"], scenario, agents, kwargs["max_tokens"]))
        return await real(client, scenario, agents, **kwargs)

    monkeypatch.setattr(bench_run, "run_scenario", recording)
    config = BenchConfig(base_url=vllm_server, api_key=VLLM_KEY, model="smollm2", agents=[2], scenarios=["none"],
                         prompt_tokens=24, max_tokens=5, requests_per_agent=1, repeats=1, min_run_seconds=0)
    results = bench_run.bench_server(f"{vllm_server}/v1", config, "emolab", ["none"])
    assert calls == [("warmup", "none", 1, 5), ("warmup", "none", 2, 8), ("emolab", "none", 2, 5)]
    assert results[0].completion_tokens == 2 * 5 and results[0].errors == 0


@pytest.mark.parametrize("label", ["emolab", "plain-vllm"])
def test_a_server_that_does_not_come_up_in_time_is_stopped(label, tmp_path, smollm2_path, smollm2_bundle_path,
                                                           monkeypatch):
    """The bench starts its servers itself; one that misses ``startup_timeout`` must not outlive the error (a
    leaked vLLM server keeps its cores and memory for the rest of the machine's life)."""
    import subprocess

    from emolab.bench import servers
    from emolab.bench.config import BenchConfig
    from emolab.serve.launch import free_port, session_processes

    started = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):  # the real process, recorded so the test can look for it afterwards
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    config = BenchConfig(serve_model=str(smollm2_path), serve_vectors=str(smollm2_bundle_path), serve_backend="hf",
                         startup_timeout=1.0, dtype="float32")  # no server loads a model in a second
    with pytest.raises(TimeoutError, match="did not answer within 1s"):
        servers.start_bench_server(config, label, free_port(), tmp_path)
    assert len(started) == 1
    started[0].wait(timeout=30)
    deadline = time.monotonic() + 30
    while session_processes(started[0].pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(started[0].pid) == []
