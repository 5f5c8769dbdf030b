"""05_simulate.ipynb under papermill with its CI parameters: it starts the patched vLLM server itself (auto),
checks that the served steered reply equals the in-kernel one token for token, runs a counterbalanced choice
experiment, a number experiment read as a distribution and a contagion conversation, writes their reports, and
stops the server."""

from __future__ import annotations

import re
import socket

import pytest
import yaml
from conftest import free_port
from test_notebooks import NOTEBOOKS, assert_no_errors, printed_value, run_notebook, text_of

from emolab.serve.launch import session_processes
from emolab.simulate import ExperimentSpec, read_trials

pytestmark = pytest.mark.slow


def test_05_simulate_through_the_vllm_server_it_starts(tmp_path):
    params = yaml.safe_load((NOTEBOOKS / "params" / "ci-05_simulate.yaml").read_text())
    port, output = free_port(), tmp_path / "sim"
    book = run_notebook("05_simulate", serve_port=port, output=str(output))
    assert_no_errors(book)
    text = text_of(book)
    try:
        import vllm  # noqa: F401

        expected_backend = "vllm"
    except ImportError:  # a machine without vLLM: auto serves with transformers, and says so
        expected_backend = "hf"
    assert f"SERVED BACKEND: {expected_backend}" in text
    served, local = printed_value(text, "SERVED STEERED:"), printed_value(text, "IN-KERNEL STEERED:")
    assert served and served == local
    if expected_backend == "vllm":
        assert "token-identical to the in-kernel steered reply: True" in text
    # the choice run: control + (prompted, steered, steered+prompted) x 2 emotions, 1 persona x 4 arms
    choice = ExperimentSpec.load(params["choice_spec"]).with_overrides(
        emotions=params["emotions"], alphas=params["alphas"], personas=params["personas"])
    records = read_trials(output / choice.name)
    assert len(records) == 7 * 4 and len({r["trial_id"] for r in records}) == 28
    assert {r["condition"] for r in records} == {
        "control", "prompted:fear", "steered:fear@1", "steered+prompted:fear@1", "prompted:anger",
        "steered:anger@1", "steered+prompted:anger@1"}
    for r in records:
        assert r["option_probs"] is None or sum(r["option_probs"].values()) == pytest.approx(1.0)
        assert (r["steering"] is None) == (r["condition_kind"] in ("control", "prompted"))
    # the number run: the same 7 conditions, one persona; each trial with the model's distribution over amounts
    number = ExperimentSpec.load(params["number_spec"]).with_overrides(
        emotions=params["emotions"], alphas=params["alphas"], personas=params["personas"])
    amounts = read_trials(output / number.name)
    assert len(amounts) == 7 and number.number_readout == "distribution"
    for r in amounts:
        d = r["number_distribution"]
        assert d["mass"] + d["other"] + d["outside"] + d["unread"] == pytest.approx(1.0, abs=1e-6) and d["requests"] >= 2
        assert r["expected_number"] == pytest.approx(sum(float(v) * p for v, p in d["probs"].items()) / d["mass"],
                                                      abs=1e-4)
    assert "under the model's distribution per condition" in (output / number.name / "report.md").read_text()
    # the conversation: control + (prompted, steered) x 2 emotions, 6 agents, 2 turns
    replies = read_trials(output / "contagion")
    assert len(replies) == 5 * 6 * 2 and all(r["judged"] for r in replies)
    assert {(r["turn"], r["agent"]) for r in replies} == {(t, a) for t in range(2) for a in range(6)}
    for folder in (output / choice.name, output / number.name, output / "contagion"):
        report = (folder / "report.md").read_text()
        links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
        assert links and all((folder / link).is_file() for link in links)
        assert "| p_value | p_holm |" in report  # each effect's permutation test, adjusted across the table
    # the choice report split by the drawn persona's temperament (one persona: one level, no moderator p)
    split = (output / choice.name / "report.md").read_text()
    assert f"## Does the effect differ by {params['by']}?" in split
    assert (output / choice.name / "tables" / f"heterogeneity_{params['by']}.csv").is_file()
    assert "server stopped" in text
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    sid = int(printed_value(text, "server pid:"))
    assert session_processes(sid) == []
