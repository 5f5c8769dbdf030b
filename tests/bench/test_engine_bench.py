"""Engine-level bench (offline vllm.LLM, no HTTP): N agents in flight, none vs mixed in one engine."""

from __future__ import annotations

import json

import pytest

from emolab.bench.engine import summarize_engine_runs


def run(scenario, agents, tok, repeat=0):
    return {"scenario": scenario, "agents": agents, "tok_per_s": tok, "repeat": repeat, "label": "x"}


def test_ratios_are_taken_per_n_within_one_engine_and_against_plain():
    rows = summarize_engine_runs([run("none", 4, 100.0), run("mixed", 4, 98.0), run("none", 4, 110.0, 1),
                                  run("mixed", 4, 110.0, 1), run("plain", 4, 105.0)])
    by = {r["scenario"]: r for r in rows}
    assert by["none"]["tok_per_s"] == 105.0 and by["mixed"]["tok_per_s"] == 104.0
    assert by["mixed"]["per_repeat_ratio_vs_none"] == [0.98, 1.0]
    assert by["mixed"]["ratio_vs_none"] == pytest.approx(104 / 105)
    assert by["mixed"]["ratio_vs_plain"] == pytest.approx(104 / 105)
    assert by["plain"]["ratio_vs_none"] is None
    assert by["none"]["spread"] == pytest.approx(10 / 105) and by["plain"]["spread"] is None  # one run: no spread


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("temperature", ["0", "0.8"])  # greedy, and sampled with a seed per request
def test_engine_bench_smoke_on_cpu(tmp_path, smollm2_path, smollm2_bundle_path, temperature):
    pytest.importorskip("vllm")
    from emolab.cli import main

    out = tmp_path / "engine.json"
    code = main(["bench", "--engine", "--serve-model", str(smollm2_path), "--serve-vectors", str(smollm2_bundle_path),
                 "--agents", "3", "--repeats", "1", "--prompt-tokens", "24", "--max-tokens", "6", "--engine-seconds", "1",
                 "--dtype", "float32", "--max-model-len", "512", "--engine-arg", "enforce_eager=true",
                 "--scenarios", "none,mixed,mixed-null,controls,readout", "--output", str(out), "--log-dir", str(tmp_path / "logs"),
                 "--temperature", temperature])
    assert code == 0
    result = json.loads(out.read_text())
    runs = {r["scenario"]: r for r in result["runs"]}
    assert set(runs) == {"none", "mixed", "mixed-null", "controls", "readout"}
    for r in runs.values():
        assert r["generated"] == 6 * r["requests"] and r["requests"] % 3 == 0  # ignore_eos; 3 agents x k each
        assert r["ended_at"] - r["started_at"] == pytest.approx(r["wall_s"], abs=0.05)  # to align the card's log
    assert result["config"]["temperature"] == float(temperature)
    assert "emolab steering on" in (tmp_path / "logs" / "engine-emolab.log").read_text()


def test_engine_bench_refuses_http_only_scenarios(capsys):
    from emolab.cli import main

    with pytest.raises(SystemExit) as exit_:  # argparse's parser.error: one line, exit 2
        main(["bench", "--engine", "--serve-model", "m", "--serve-vectors", "v", "--scenarios", "none,churn"])
    assert exit_.value.code == 2
    assert "--scenarios churn: --engine runs none, mixed, mixed-null" in capsys.readouterr().err
