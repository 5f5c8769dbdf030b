"""Experiments run against a real `emolab serve` (SmolLM2, the committed bundle, HF backend): the trial log
survives a kill without losing or repeating a trial, a resumed conversation equals an uninterrupted one reply
for reply, the CLI names a bad spec's field in one line, and the report's numbers are the frames'."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from conftest import hooked_greedy, run_cli, running_server, steering_hooks

from emolab.core.bundle import EmotionBundle
from emolab.core.models import chat_prompt_ids, load_model
from emolab.simulate import ExperimentSpec, analyze, read_trials, run_experiment, write_report
from emolab.simulate.design import conditions, trials
from emolab.simulate.readout import parse_number

pytestmark = pytest.mark.slow
KEY = "sim-key"
NUMBER = {
    "name": "offer", "kind": "number", "system": "You are {persona}.", "personas": ["a nurse", "a teacher", "a cook"],
    "prompt": "You have $10. How many dollars do you give to a stranger? Answer with a number only.",
    "range": [0, 10], "conditions": {"emotions": ["fear", "joy"], "alphas": [1], "steered_prompted": False},
    "sampling": {"max_tokens": 6}, "concurrency": 4,
}
TALK = {
    "name": "talk", "kind": "conversation", "opening": "The bus is late again. How is everyone?",
    "agents": {"count": 3, "seeded": 1, "names": ["Ana", "Ben", "Cy"]}, "turns": 2, "window": 4,
    "state": {"rule": "decay", "initial": 1.5, "decay": 0.5, "gain": 2.0},
    "conditions": {"emotions": ["fear"], "alphas": [1], "prompted": False, "steered_prompted": False},
    "sampling": {"max_tokens": 10},
}


@pytest.fixture(scope="module")
def server(smollm2_path, smollm2_bundle_path):
    with running_server(vectors=smollm2_bundle_path, model=str(smollm2_path), backend="hf", api_key=KEY,
                        extra_args=["--dtype", "float32", "--served-model-name", "smollm2"]) as url:
        yield url + "/v1"


def _spec_file(tmp_path, data, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_killed_run_resumes_without_losing_or_repeating_a_trial(server, tmp_path):
    spec_file, out = _spec_file(tmp_path, NUMBER), tmp_path / "run"
    cmd = [sys.executable, "-m", "emolab.cli", "simulate", "run", str(spec_file), "--base-url", server,
           "--output", str(out), "--no-progress", "--no-report"]
    env = {**os.environ, "EMOLAB_API_KEY": KEY}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "trials.jsonl").is_file() and len((out / "trials.jsonl").read_bytes().splitlines()) >= 4:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_trials(out)
    spec = ExperimentSpec.load(spec_file)
    expected = {t.trial_id for t in trials(spec, conditions(spec, ["anger", "joy", "sadness", "disgust", "fear",
                                                                   "surprise"], {"fear": 0.33, "joy": 0.36}))}
    assert 4 <= len(before) < len(expected) == 5 * 3  # control, prompted x2, steered x2; 3 personas
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    after = read_trials(out)
    assert [r["trial_id"] for r in after[:len(before)]] == [r["trial_id"] for r in before]  # nothing rewritten
    assert len(after) == len(expected) and {r["trial_id"] for r in after} == expected
    meta = json.loads((out / "run.json").read_text())
    assert len(meta["resumed"]) == 1 and meta["finished"] and meta["n_trials_logged"] == 15
    assert meta["servers"][-1]["bundle_sha256"] and meta["servers"][-1]["backend"] == "hf"


@pytest.fixture(scope="module")
def judge():
    from emolab.evaluate.judge import JudgeConfig, load_or_train_judge

    return load_or_train_judge(JudgeConfig(max_train_per_class=60, max_test_per_class=20))


def test_a_resumed_conversation_equals_an_uninterrupted_one(server, judge, smollm2_bundle_path, tmp_path):
    spec = ExperimentSpec.from_dict(TALK)
    run = dict(base_url=server, api_key=KEY, progress=False, judge=judge)
    whole = run_experiment(spec, tmp_path / "whole", **run)
    part = run_experiment(spec, tmp_path / "part", limit=4, **run)
    assert len(part.done) == 4 and not part.meta.get("finished")
    resumed = run_experiment(spec, tmp_path / "part", **run)
    assert resumed.meta["finished"]
    key = lambda r: (r["condition"], r["turn"], r["agent"])  # noqa: E731
    a = {key(r): r for r in read_trials(tmp_path / "whole")}
    b = {key(r): r for r in read_trials(tmp_path / "part")}
    assert len(a) == len(whole.done) == 2 * 3 * 2 and a.keys() == b.keys()
    for k in a:
        assert (a[k]["reply"], a[k]["level"], a[k]["steering"], a[k]["messages"]) == \
            (b[k]["reply"], b[k]["level"], b[k]["steering"], b[k]["messages"])
    # the decay rule, by hand: the seeded agent starts at 1.5; after turn 0 its level is
    # 0.5 * 1.5 + 2 * (read - 1/6), read = mean judged fear of the opening (unjudged) and the three replies
    turn0 = [a[("steered:fear@1", 0, i)] for i in range(3)]
    read = sum(r["judged"]["fear"] for r in turn0) / 3
    expected = max(-2.0, min(2.0, 0.5 * 1.5 + 2.0 * (read - 1 / 6)))
    assert a[("steered:fear@1", 1, 0)]["level"] == pytest.approx(expected, abs=1e-6)
    fear = json.loads((smollm2_bundle_path / "metadata.json").read_text())["alpha_recommendations"]["fear"]
    assert a[("steered:fear@1", 0, 0)]["steering"] == {"fear": pytest.approx(1.5 * fear, abs=1e-6)}
    assert a[("steered:fear@1", 0, 1)]["steering"] is None  # unseeded agents start at the baseline 0
    assert all(r["steering"] is None for k, r in a.items() if k[0] == "control")


def test_the_cli_names_a_bad_spec_field_in_one_line(tmp_path, capsys):
    bad = _spec_file(tmp_path, {**NUMBER, "sampling": {"max_tokens": 0}}, "bad.yaml")
    code, out, err = run_cli(["simulate", "run", str(bad), "--base-url", "http://127.0.0.1:9/v1"], capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert "bad.yaml: sampling.max_tokens: must be 1..8192" in err
    listed = _spec_file(tmp_path, NUMBER, "listed.yaml")  # 3 personas written out
    code, _, err = run_cli(["simulate", "run", str(listed), "--personas", "99", "--base-url", "http://127.0.0.1:9/v1"],
                           capsys)
    assert code == 2 and "--personas: the spec has 3 personas, asked for 99" in err
    code, _, err = run_cli(["simulate", "run", "risk", "--personas", "20000", "--base-url", "http://127.0.0.1:9/v1"],
                           capsys)  # risk draws from the built-in population of 18,432 people
    assert code == 2 and "--personas: the population has 18432 distinct people, asked for 20000" in err
    code, _, err = run_cli(["simulate", "run", "risk", "--seeds", "0,1", "--base-url", "http://127.0.0.1:9/v1"], capsys)
    assert code == 2 and "--seeds: at temperature 0 every seed sends the same requests" in err
    code, _, err = run_cli(["simulate", "run", "contagion", "--seeds", "0,1,2,3,4", "--base-url",
                            "http://127.0.0.1:9/v1"], capsys)
    assert code == 2 and "--seeds: at temperature 0 a replicate differs" in err and "of the 4 agent personas" in err
    code, _, err = run_cli(["simulate", "run", "risk", "--temperature", "3", "--base-url", "http://127.0.0.1:9/v1"],
                           capsys)
    assert code == 2 and "--temperature: must be 0..2" in err
    code, _, err = run_cli(["simulate", "run", "dictator", "--answer-prefix", "I give $ ", "--base-url",
                            "http://127.0.0.1:9/v1"], capsys)
    assert code == 2 and "--answer-prefix: must not end in whitespace" in err
    code, _, err = run_cli(["simulate", "run", "contagion", "--answer-prefix", "I say", "--base-url",
                            "http://127.0.0.1:9/v1"], capsys)
    assert code == 2 and "--answer-prefix: only choice and number experiments have answer_prefix" in err
    code, _, err = run_cli(["simulate", "run", "risk"], capsys)
    assert code == 2 and "give --base-url, or --serve-model and --serve-vectors" in err


def test_the_report_is_written_from_the_frames(server, tmp_path, capsys):
    spec_file, out = _spec_file(tmp_path, {**NUMBER, "personas": ["a nurse", "a teacher"]}), tmp_path / "run"
    os.environ["EMOLAB_API_KEY"] = KEY
    try:
        code, stdout, err = run_cli(["simulate", "run", str(spec_file), "--base-url", server, "--output", str(out),
                                     "--no-progress"], capsys)
    finally:
        del os.environ["EMOLAB_API_KEY"]
    assert code == 0, err
    result = analyze(out)
    table = result.tables["effects"]
    assert table["condition"].tolist()[0] == "control" and len(table) == 5
    csv = (out / "tables" / "effects.csv").read_text().splitlines()
    assert csv[0].startswith("condition,kind,emotion") and len(csv) == 6
    report = (out / "report.md").read_text()
    for row in table.itertuples():
        assert f"| {row.condition} | {row.n} |" in report
    assert "![effects](plots/effects.png)" in report and (out / "plots" / "effects.png").is_file()
    assert "| effect [95% CI] | p_value | p_holm |" in report and "sign-flip permutation test" in report
    assert {"p_value", "p_holm", "q_bh"} <= set(csv[0].split(","))
    steered = table[table["condition"] != "control"]
    tested = steered.dropna(subset=["p_value"])
    assert tested["p_value"].between(0, 1).all() and (tested["p_holm"] >= tested["p_value"]).all()
    assert (steered["p_value"].isna() == steered["effect_low"].isna()).all()  # no test where there is no interval
    # beside each mean: the share of parsed answers that repeat the prompt's one number ($10), from the trial log
    trials = result.trials
    echoes = trials.dropna(subset=["parsed_number"]).groupby("condition")["parsed_number"].apply(lambda s: (s == 10).mean())
    assert table.set_index("condition")["from_prompt"].dropna().to_dict() == pytest.approx(echoes.to_dict())
    assert "| unparseable | from_prompt |" in report
    # a reply cut at max_tokens was read with the cut in mind (a number running into it is no answer)
    cut = trials[trials["finish_reason"] == "length"]
    assert len(cut) and all(parse_number(r.reply, 0, 10, cut=True) == (None if pd.isna(r.parsed_number) else r.parsed_number)
                            for r in cut.itertuples())


def test_an_answer_prefix_is_continued_and_the_number_read_from_the_continuation(server, smollm2_path, tmp_path):
    data = {**NUMBER, "personas": ["a nurse", "a teacher"], "answer_prefix": "I give $", "concurrency": 1,
            "conditions": {"emotions": ["fear"], "alphas": [1], "prompted": False, "steered_prompted": False}}
    out = tmp_path / "run"
    run_experiment(ExperimentSpec.from_dict(data), out, base_url=server, api_key=KEY, progress=False)
    records = read_trials(out)
    assert len(records) == 4 and all(r["messages"][-1] == {"role": "assistant", "content": "I give $"}
                                      for r in records)
    model, tokenizer = load_model(str(smollm2_path), dtype="float32", device="cpu")
    for r in records:
        assert r["parsed_number"] == parse_number(r["reply"], 0, 10, cut=r["finish_reason"] == "length")
        if r["condition"] == "control":  # the model went on from "$": the reply is what greedy decoding continues
            ids = chat_prompt_ids(tokenizer, r["messages"], add_generation_prompt=False, continue_final_message=True)
            assert r["reply"] == hooked_greedy(model, tokenizer, ids, 6)[0]
            assert r["usage"]["prompt_tokens"] == len(ids)
    write_report(out)
    assert "every reply begins with the words `I give $`" in (out / "report.md").read_text()


def test_the_distribution_readout_is_the_models_own_probability_of_each_amount(server, smollm2_path,
                                                                              smollm2_bundle_path, tmp_path):
    """number_readout: distribution — the server-run walk equals the same walk over the model's own logits, computed
    here (steered with hand-made hooks), node by node; seeds of one prompt share the walk. The walk itself is
    tested exactly in test_amounts.py."""
    import torch

    from emolab.simulate.amounts import read_amounts

    data = {**NUMBER, "personas": ["a nurse"], "answer_prefix": "I give $", "number_readout": "distribution",
            "seeds": [0, 1], "sampling": {"max_tokens": 6, "temperature": 0.7},
            "conditions": {"emotions": ["fear"], "alphas": [2, -2], "prompted": False, "steered_prompted": False}}
    out, spec = tmp_path / "run", ExperimentSpec.from_dict(data)
    run_experiment(spec, out, base_url=server, api_key=KEY, progress=False)
    records = {(r["condition"], r["seed"]): r for r in read_trials(out)}
    assert len(records) == 6
    model, tokenizer = load_model(str(smollm2_path), dtype="float32", device="cpu")
    bundle = EmotionBundle.load(smollm2_bundle_path)
    basis = bundle.steering_basis()

    def local_walk(record):  # the walk over this process's model: a forward pass per node, hooks for the steering
        *head, begun = record["messages"]
        (emotion, alpha), = (record["steering"] or {"fear": 0.0}).items()  # one emotion, or none
        deltas = {layer: alpha * basis[i, bundle.id_map[emotion]] for i, layer in enumerate(bundle.chosen_layers)
                  if alpha}

        async def ask(text):
            ids = chat_prompt_ids(tokenizer, [*head, {**begun, "content": begun["content"] + text}],
                                  add_generation_prompt=False, continue_final_message=True)
            with torch.inference_mode():
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
            values, indices = logprobs.topk(spec.sampling.top_logprobs)
            return [{"token": tokenizer.decode([i]), "logprob": float(v)}
                    for v, i in zip(values, indices.tolist(), strict=True)]
        with steering_hooks(model, deltas):
            return asyncio.run(read_amounts(ask, *spec.range, floor=spec.distribution_floor)).to_record()

    for condition in ("control", "steered:fear@2"):
        dist = records[(condition, 0)]["number_distribution"]
        assert dist == records[(condition, 1)]["number_distribution"]  # read once for both seeds
        assert dist["mass"] + dist["other"] + dist["outside"] + dist["unread"] == pytest.approx(1.0, abs=1e-6)
        assert records[(condition, 0)]["expected_number"] == pytest.approx(
            sum(float(v) * p for v, p in dist["probs"].items()) / dist["mass"], abs=1e-5)
        local = local_walk(records[(condition, 0)])
        assert local["probs"] == pytest.approx(dist["probs"], abs=1e-4) and local["requests"] == dist["requests"]
        assert len(dist["probs"]) >= 3 and dist["requests"] >= 3
    assert (records[("control", 0)]["number_distribution"]["expected"]
            != records[("steered:fear@2", 0)]["number_distribution"]["expected"])  # the steering reached the walk
    amounts = analyze(out).tables["amounts"].set_index("condition")
    for condition in ("control", "steered:fear@2"):  # the read amounts' share on the prompt's one number, $10
        dist = records[(condition, 0)]["number_distribution"]
        assert amounts.loc[condition, "amount_from_prompt"] == pytest.approx(dist["probs"].get("10", 0) / dist["mass"])
        assert amounts.loc[condition, "mean"] == pytest.approx(dist["expected"], abs=1e-5)
    check = analyze(out).tables["amounts_sign_check"].iloc[0]  # toward fear beside away from it
    assert (check["emotion"], check["multiple"]) == ("fear", 2.0)
    assert (check["toward"], check["away"]) == (amounts.loc["steered:fear@2", "effect"],
                                                amounts.loc["steered:fear@-2", "effect"])
    assert check["verdict"] == ("opposite" if check["toward"] * check["away"] < 0 else "unclear")  # 1 unit: no p
    report = write_report(out).read_text()
    assert "## Does the direction matter? Toward and away from each emotion" in report
    assert "## Expected amount under the model's distribution per condition" in report
    assert "![amount_distribution](plots/amount_distribution.png)" in report
    assert (out / "plots" / "amount_distribution.png").is_file() and (out / "tables" / "amounts.csv").is_file()


def test_agents_can_carry_their_own_readout_as_state(server, smollm2_bundle_path, tmp_path):
    """state.read: readout — each agent's level follows its own emotion readout of the feed it read (no judge)."""
    spec = ExperimentSpec.from_dict({**TALK, "name": "talk-readout",
                                     "state": {**TALK["state"], "read": "readout"}})
    assert spec.state.reference == 0.0  # the readout's scale is centred on a typical held-out token
    run_experiment(spec, tmp_path / "r", base_url=server, api_key=KEY, progress=False, judge=None)
    rows = {(r["condition"], r["turn"], r["agent"]): r for r in read_trials(tmp_path / "r")}
    for agent in range(3):
        first, second = rows[("steered:fear@1", 0, agent)], rows[("steered:fear@1", 1, agent)]
        read = first["readout"]["prompt"]["fear"]
        assert first["readout"]["scale"] == "standardized" and set(first["readout"]["prompt"]) >= {"fear", "joy"}
        level = 1.5 if agent == 0 else 0.0
        assert second["level"] == pytest.approx(max(-2.0, min(2.0, 0.5 * level + 2.0 * read)), abs=1e-5)
    # agents read different feeds (their own name and persona), so their states differ
    assert len({rows[("steered:fear@1", 1, a)]["level"] for a in range(3)}) == 3


def test_effects_split_by_a_persona_attribute_are_the_frames_subgroups(server, tmp_path, capsys):
    """Personas drawn from a population of the spec's own (3 roles x 2 moods): the report splits the steered effect
    by mood, each level's effect is the mean of its personas' paired differences, and the moderator p is the
    permutation test of those differences with the moods shuffled among the personas."""
    from emolab.core.stats import between_groups_p

    data = {"name": "pick", "kind": "choice", "system": "You are {persona}.",
            "personas": {"sample": 6, "seed": 0, "template": "a {role} who feels {mood} today",
                         "attributes": {"role": ["baker", "pilot", "judge"], "mood": ["calm", "restless"]}},
            "prompt": "Choose one.\n{options}\nAnswer with the letter only.",
            "options": {"safe": "Keep $5 for sure.", "gamble": "Flip a coin for $12 or nothing."},
            "conditions": {"emotions": ["fear"], "alphas": [1], "prompted": False, "steered_prompted": False},
            "sampling": {"max_tokens": 4}, "concurrency": 8}
    out = tmp_path / "run"
    run_experiment(ExperimentSpec.from_dict(data), out, base_url=server, api_key=KEY, progress=False)
    result = analyze(out, by="mood")
    frame = result.trials
    assert set(frame["persona_mood"]) == {"calm", "restless"} and frame["persona_role"].notna().all()
    cells = frame.pivot_table(index=["persona_index", "arm"], columns="condition", values="p_safe")
    per_persona = (cells["steered:fear@1"] - cells["control"]).groupby("persona_index").mean()
    mood = frame.drop_duplicates("persona_index").set_index("persona_index")["persona_mood"]
    by_mood = result.tables["by_mood"].set_index(["condition", "mood"])
    for level in ("calm", "restless"):
        row = by_mood.loc[("steered:fear@1", level)]
        assert row["effect"] == pytest.approx(per_persona[mood == level].mean(), abs=1e-12)
        assert row["n_units"] == 3
    spread = result.tables["heterogeneity_mood"].set_index("condition").loc["steered:fear@1"]
    assert spread["p_value"] == between_groups_p(per_persona.to_numpy(), mood.loc[per_persona.index].tolist())
    assert spread["n_units"] == 6 and spread["n_levels"] == 2
    design = result.tables["effects"]["condition"].tolist()  # control first, then the design's order
    assert result.tables["heterogeneity_mood"]["condition"].tolist() == design[1:]
    assert result.tables["by_mood"]["condition"].tolist() == [c for c in design for _ in ("calm", "restless")]

    # the options' order is the spec's (no outcome given: the first, safe), also as read back from run.json, and
    # a run.json written with its keys sorted (emolab before 2026-12-07: gamble first) keeps the outcome it ran with
    assert result.outcome_label == "P(safe)" and list(result.spec.options) == ["safe", "gamble"]
    control = result.tables["effects"].set_index("condition").loc["control", "mean"]
    assert control == pytest.approx(frame.loc[frame["condition"] == "control", "p_safe"].mean(), abs=1e-12)
    meta = json.loads((out / "run.json").read_text())
    legacy = tmp_path / "legacy"
    shutil.copytree(out, legacy)
    (legacy / "run.json").write_text(json.dumps(meta, sort_keys=True))
    assert list(json.loads((legacy / "run.json").read_text())["spec_source"]["options"]) == ["gamble", "safe"]
    assert analyze(legacy).outcome_label == "P(safe)"
    assert analyze(legacy).tables["effects"]["mean"].tolist() == result.tables["effects"]["mean"].tolist()

    code, _, err = run_cli(["simulate", "report", str(out), "--by", "mood"], capsys)
    assert code == 0, err
    report = (out / "report.md").read_text()
    assert "## Does the effect differ by mood?" in report and "![by_mood](plots/by_mood.png)" in report
    assert (out / "plots" / "by_mood.png").is_file() and (out / "tables" / "by_mood.csv").is_file()
    code, _, err = run_cli(["simulate", "report", str(out), "--by", "city"], capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert "--by city: the run's personas have no such attribute (they have: role, mood)" in err
    code, _, err = run_cli(["simulate", "report", str(out)], capsys)
    assert code == 0 and "`emolab simulate report --by ATTRIBUTE`" in (out / "report.md").read_text()
    assert "attributes role, mood" in (out / "report.md").read_text()
