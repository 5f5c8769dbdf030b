"""``emolab bench`` tells the truth about itself: each run records its client processes' CPU time, and a
ratio over a run that measured the client (a client process CPU-bound) or ran shorter than the minimum is
printed as "not a measurement", not as a result. No server is started: the client is a stand-in."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from types import SimpleNamespace

from emolab.bench.load import AgentStats, RunResult, measurement_problems, not_measured, run_agents, to_result
from emolab.bench.tables import print_table, summarize_runs


def run(scenario: str, tok_per_s: float, label: str = "emolab", wall_s: float = 40.0, share: float = 0.2) -> RunResult:
    return RunResult(label=label, scenario=scenario, agents=4, requests=8, errors=0, wall_s=wall_s,
                     completion_tokens=400, prompt_tokens_mean=30.0, tok_per_s=tok_per_s, per_agent_tok_per_s=25.0,
                     ttft_p50_ms=10.0, ttft_p99_ms=20.0, itl_p50_ms=1.0, itl_p99_ms=2.0, client_cpu_share=share)


class StandInClient:
    """Streams ``tokens`` chunks per request; ``busy`` burns the client's CPU between them, else it waits."""

    def __init__(self, busy: bool) -> None:
        self.busy = busy

    async def stream_chat(self, prompt, steering, max_tokens, **kwargs):
        for _ in range(max_tokens):
            if self.busy:
                end = time.process_time() + 0.01
                while time.process_time() < end:
                    pass
            else:
                await asyncio.sleep(0.01)
            yield SimpleNamespace(choices=[SimpleNamespace(delta=SimpleNamespace(content="x"))], usage=None)
        yield SimpleNamespace(choices=[], usage=SimpleNamespace(completion_tokens=max_tokens, prompt_tokens=10))


def measure(busy: bool) -> RunResult:
    stats = asyncio.run(run_agents(StandInClient(busy), "none", range(2), requests_per_agent=2, prompt_words=5,
                                   max_tokens=15, alpha=1.0, n_emotions=6, seed=0))
    return to_result(stats, label="emolab", scenario="none", agents=2)


def test_each_run_records_its_client_cpu_and_a_busy_client_is_named():
    busy, idle = measure(busy=True), measure(busy=False)
    # CPU time plus the time it waited for a CPU: a busy client counts as bound on a loaded host too
    assert busy.client_cpu_share > 0.9 and busy.client_cpu_s > 0.4 and busy.client_processes == 1
    assert idle.client_cpu_share < 0.5
    assert any(p.startswith("client-bound") for p in measurement_problems(busy, min_seconds=0))
    assert measurement_problems(idle, min_seconds=0) == []
    assert measurement_problems(idle)[0].startswith("too short (")  # a sub-second run against the 30 s default


def test_client_processes_merge_into_one_run():
    a = AgentStats(completion_tokens=10, started=100.0, ended=130.0, cpu_s=12.0, cpu_wait_s=1.0, cpu_share=0.4)
    b = AgentStats(completion_tokens=10, started=100.0, ended=131.0, cpu_s=25.0, cpu_wait_s=4.0, cpu_share=0.95)
    result = to_result(a.merge(b), label="emolab", scenario="mixed", agents=8)
    assert (result.client_processes, result.client_cpu_s, result.client_cpu_wait_s) == (2, 37.0, 5.0)
    assert result.client_cpu_share == 0.95  # the busiest process, not the sum
    assert measurement_problems(result) == ["client-bound (a client process was on or waiting for a CPU 95% of the "
                                            "run; more --client-processes, or a host with cores to spare)"]


def test_a_ratio_is_not_a_measurement_when_its_run_or_its_baseline_is_not():
    runs = [run("none", 100.0), run("mixed", 97.0), run("churn-none", 80.0, wall_s=3.0), run("churn", 70.0)]
    assert not_measured(runs, "emolab", "mixed", 4) is None
    assert not_measured(runs, "emolab", "churn", 4) == "not a measurement: too short"  # its baseline is short
    runs.append(replace(run("mixed", 99.0, share=0.97), wall_s=2.0))  # a second repeat, client-bound and short
    assert not_measured(runs, "emolab", "mixed", 4) == "not a measurement: client-bound / too short"
    assert not_measured(runs, "emolab", "none", 4) is None


def test_the_table_prints_why_instead_of_the_ratio(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")
    runs = [run("none", 100.0), run("mixed", 97.0, wall_s=2.0), run("none", 120.0, label="plain-vllm")]
    summary = summarize_runs(runs)
    marks = [{"label": "emolab", "scenario": "mixed", "agents": 4, "why": not_measured(runs, "emolab", "mixed", 4)}]
    print_table(summary, marks)
    out = capsys.readouterr().out
    rows = {tuple(c.strip() for c in line.strip("│").split("│"))[:2]: [c.strip() for c in line.strip("│").split("│")]
            for line in out.splitlines() if line.startswith("│")}
    assert rows[("emolab", "mixed")][4:6] == ["too short", "-"]
    assert rows[("emolab", "none")][4:6] == ["1.000", f"{100 / 120:.3f}"]
    assert "0.970" not in out and "not a measurement, no ratio shown" in out


def test_run_bench_names_the_runs_that_are_not_measurements(tmp_path, monkeypatch):
    import emolab.bench.run as bench_run
    from emolab.bench import BenchConfig

    runs = [run("none", 100.0), run("mixed", 95.0), run("none", 90.0, wall_s=5.0, share=0.99, label="plain-vllm")]
    monkeypatch.setattr(bench_run, "bench_server", lambda *args, **kwargs: runs)
    out = tmp_path / "bench.json"
    result = bench_run.run_bench(BenchConfig(base_url="http://127.0.0.1:9/v1", output=str(out), scenarios=["none",
                                                                                                          "mixed"]))
    saved = json.loads(out.read_text())
    assert saved["not_a_measurement"] == result["not_a_measurement"] == [
        {"label": "plain-vllm", "scenario": "none", "agents": 4, "why": "not a measurement: client-bound / too short"}]
    assert saved["runs"][2]["client_cpu_share"] == 0.99  # the raw figures stay in the JSON
    ratios = {(r["label"], r["scenario"]): r["ratio_vs_unsteered"] for r in saved["summary"]}
    assert ratios[("emolab", "mixed")] == 0.95  # numbers are kept; only reading them as results is refused
    with_min = bench_run.run_bench(BenchConfig(base_url="http://127.0.0.1:9/v1", scenarios=["none", "mixed"],
                                               min_run_seconds=60.0))
    assert len(with_min["not_a_measurement"]) == 3
