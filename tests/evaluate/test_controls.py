"""emolab eval --controls: control specs, the matched clamp level read against the stream itself, the adoption
rule by hand, the report (table from the frame, plots written and linked), the bundle write refused when tracked,
and a smoke run on SmolLM2 whose replies are the ones each steering gives on its own."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from markdown_links import missing_images
from report_samples import controls_report

from emolab.core.bundle import EmotionBundle
from emolab.core.steering import Steering
from emolab.core.tracked import TrackedPathError
from emolab.evaluate.controls import Control, calibrate_levels
from emolab.evaluate.controls_report import (
    ADOPTION_RULE,
    adoption,
    controls_frame,
    controls_markdown,
    save_controls_report,
    write_control_recommendations,
)
from emolab.evaluate.sweep import EvalError
from emolab.evaluate.tune_bundle import goal_checks
from emolab.steer import HFSteerer, generate

EMOTIONS = ["anger", "joy", "sadness"]


# ------------------------------------------------------------------------------ specs
def test_control_specs_parse_name_and_level():
    assert Control.parse("add") == Control("add", "", "all")
    assert Control.parse(" Clamp@Generated ") == Control("clamp", "matched", "generated")
    assert Control.parse("clamp:matched*1.5@prompt").name == "clamp:matched*1.5@prompt"
    assert Control.parse("ablate@generated").name == "ablate@generated"
    assert [Control.parse(c).name for c in ("add@all", "clamp", "clamp:same", "clamp:2.5")] == [
        "add", "clamp:matched", "clamp:same", "clamp:2.5"]
    for bad, words in (("boost", "MODE"), ("add:2", "only clamp"), ("clamp:loud", "a clamp level"),
                       ("add@everywhere", "scope")):
        with pytest.raises(EvalError, match=words) as info:
            Control.parse(bad)
        assert info.value.setting == "controls"
    assert Control.parse("add").level_of(0.36, None) == 0.36
    assert Control.parse("clamp:same").level_of(0.36, 2.0) == 0.36
    assert Control.parse("clamp").level_of(0.36, 2.0) == 2.0
    assert Control.parse("clamp:matched*1.5").level_of(0.36, 2.0) == 3.0
    assert Control.parse("clamp:2.5").level_of(0.36, None) == 2.5
    assert Control.parse("ablate").level_of(0.36, 2.0) is None
    with pytest.raises(EvalError, match="matched level"):
        Control.parse("clamp").level_of(0.36, None)
    assert Control.parse("add@prompt").steering(2, 0.5) == Steering(((2, 0.5),), scope="prompt")
    assert Control.parse("clamp@generated").steering(1, 2.0) == Steering(((1, 2.0),), ((1, "clamp"),), "generated")
    assert Control.parse("ablate").steering(0, None) == Steering((), ((0, "ablate"),))


# ------------------------------------------------------------------------------ the matched level, by hand
def test_matched_level_is_where_add_holds_the_stream(tiny):
    """calibrate_levels reads the readout (the projection before each layer's steering, plus the alpha); the same
    number read straight off the stream each steered block hands on, at every generated token, per emotion."""
    model, tokenizer = tiny
    rng = np.random.default_rng(1)
    vectors = {e: (rng.normal(size=(2, 128)) * 2).astype(np.float32) for e in EMOTIONS}
    vectors["sadness"][0] = 0  # sadness steers layer 2 only
    bundle = EmotionBundle(EMOTIONS, [1, 2], vectors, {"num_layers": 4, "emotion_layers": {
        "anger": [1, 2], "joy": [1, 2], "sadness": [2]}})
    steerer = HFSteerer(model, bundle, alpha_scale="raw")
    alphas = {"anger": 1.5, "sadness": -2.0}
    prompts = ["Describe the room.", "What is the time?"]
    got = calibrate_levels(model, tokenizer, steerer, alphas, prompts, max_new_tokens=5)

    from emolab.evaluate.sweep import user_prompt_ids

    ids = user_prompt_ids(tokenizer, prompts)
    steerings = [None] * 2 + [Steering(((bundle.emotions.index(e), a),)) for e, a in alphas.items() for _ in ids]
    seen = {layer: [] for layer in (1, 2)}
    hooks = [model.model.layers[layer + 1].register_forward_pre_hook(
        lambda m, args, kwargs, layer=layer: seen[layer].append((args[0] if args else kwargs["hidden_states"]).clone()),
        with_kwargs=True) for layer in (1, 2)]
    try:
        conts = generate(model, tokenizer, ids * 3, steerer=steerer, steerings=steerings, max_new_tokens=5,
                         batch_size=6)
    finally:
        for hook in hooks:
            hook.remove()
    basis = bundle.steering_basis("raw").astype(np.float64)
    for group, emotion in enumerate([None, *alphas]):
        for name in alphas if emotion is None else [emotion]:
            k = bundle.emotions.index(name)
            per_layer = []
            for layer in bundle.layers_of(name):
                position = bundle.chosen_layers.index(layer)
                unit = basis[position, k] / np.linalg.norm(basis[position, k])
                # forward j (0: the prompt) feeds generated token j-1; the last token is never fed back
                steps = [range(1, min(len(conts[row]), len(seen[layer]) - 1) + 1) for row in range(6)]
                values = [float(seen[layer][step][row, -1].double().numpy() @ unit) / np.linalg.norm(basis[position, k])
                          for row in range(2 * group, 2 * group + 2) for step in steps[row]]
                assert values, (name, layer)
                per_layer.append(np.mean(values))
            key = "natural_per_layer" if emotion is None else "matched_per_layer"
            np.testing.assert_allclose(got[name][key], per_layer, atol=2e-3)
    assert got["sadness"]["layers"] == [2] and len(got["anger"]["matched_per_layer"]) == 2


# ------------------------------------------------------------------------------ the adoption rule, by hand
def _row(emotion, control, delta, hit, ppl, degenerate, relevance, base):
    row = {"emotion": emotion, "control": control, "mode": control.split(":")[0].split("@")[0],
           "scope": control.split("@")[1] if "@" in control else "all", "value": 1.0, "delta": delta,
           "delta_ci95": [delta - 0.05, delta + 0.05], "hit_rate": hit, "ppl_median": ppl, "degenerate": degenerate,
           "question": 0.0, "relevance": relevance}
    row["checks"] = goal_checks(row, base, _limits())
    return row


def _limits():
    from emolab.evaluate.selection import Limits

    return Limits()


def test_adoption_rule_by_hand():
    base = {"ppl_median": 2.0, "degenerate": 0.0, "question": 0.0}
    rows = [
        # anger: add misses the hit line; clamp@generated meets every line but loses relevance; clamp does it all
        _row("anger", "add", 0.20, 0.30, 3.0, 0.05, 0.90, base),
        _row("anger", "prompted", 0.50, 0.90, 2.0, 0.00, 1.00, base),
        _row("anger", "clamp@generated", 0.40, 0.60, 3.0, 0.05, 0.80, base),
        _row("anger", "clamp", 0.25, 0.45, 3.9, 0.10, 0.86, base),
        # joy: add meets every line, so a better-looking control is not adopted
        _row("joy", "add", 0.30, 0.50, 3.0, 0.0, 0.9, base),
        _row("joy", "clamp", 0.50, 0.90, 3.0, 0.0, 1.0, base),
        # sadness: add misses; the only control that meets the lines loses relevance
        _row("sadness", "add", 0.10, 0.50, 3.0, 0.0, 0.9, base),
        _row("sadness", "clamp", 0.30, 0.50, 3.0, 0.0, 0.8, base),
        # disgust: add misses; no control meets every line (perplexity past 2x)
        _row("disgust", "add", 0.10, 0.20, 3.0, 0.0, 0.9, base),
        _row("disgust", "clamp", 0.30, 0.50, 4.1, 0.0, 0.9, base),
    ]
    got = adoption({"emotions": ["anger", "joy", "sadness", "disgust", "fear"], "rows": rows})
    assert got["anger"]["adopted"] == "clamp" and got["anger"]["add_missed"] == ["hit_rate"]
    assert (got["anger"]["mode"], got["anger"]["scope"]) == ("clamp", "all")
    assert got["joy"] == {"adopted": None, "reason": "add meets every goal line"}
    assert got["sadness"]["adopted"] is None and "lose relevance" in got["sadness"]["reason"]
    assert got["disgust"]["adopted"] is None and "no other control" in got["disgust"]["reason"]
    assert got["fear"]["adopted"] is None and "not measured" in got["fear"]["reason"]
    assert "prompted baseline is shown, never adopted" in ADOPTION_RULE


# ------------------------------------------------------------------------------ the report
def test_controls_report_frame_markdown_and_plots(tmp_path):
    report = controls_report()
    path = save_controls_report(report, tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    frame = controls_frame(saved)
    assert frame[["emotion", "control"]].values.tolist() == [[r["emotion"], r["control"]] for r in report["rows"]]
    for key in ("delta", "hit_rate", "ppl_median", "degenerate", "relevance", "cosine"):
        assert frame[key].tolist() == [r[key] for r in report["rows"]], key
    assert frame["ppl_ratio"].tolist() == [r["ppl_median"] / report["baseline"]["ppl_median"] for r in report["rows"]]
    assert frame["missed"].tolist() == [", ".join(k for k, ok in r["checks"].items() if not ok) for r in report["rows"]]
    text = path.read_text()
    assert text == controls_markdown(saved, {"tradeoff": "controls-tradeoff.png", "bars": "controls-bars.png"})
    lines = [line for line in text.splitlines() if line.startswith(("| anger", "| joy"))]
    assert len(lines) == len(frame)
    for line, row in zip(lines, frame.itertuples(), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1].startswith(row.control)
        assert cells[3] == f"{row.delta:+.3f} [{row.delta_low:+.3f}, {row.delta_high:+.3f}]"
        assert cells[5] == f"{row.ppl_median:.2f} ({row.ppl_ratio:.2f}x)"
        assert cells[7] == f"{row.relevance:.2f} [{row.relevance_low:.2f}, {row.relevance_high:.2f}]"
    assert missing_images(path) == [] and (tmp_path / "controls-tradeoff.png").stat().st_size > 5000
    assert save_controls_report(report, tmp_path / "bare", plots=False).read_text().count("![") == 0


def test_control_recommendations_go_into_a_copy_never_a_tracked_bundle(smollm2_bundle_path, tmp_path):
    report = {**controls_report(), "adoption": {"anger": {"adopted": "clamp@generated", "mode": "clamp",
                                                          "scope": "generated", "value": 1.7, "reason": "r"},
                                                "joy": {"adopted": None, "reason": "add meets every goal line"}}}
    with pytest.raises(TrackedPathError):
        write_control_recommendations(smollm2_bundle_path, report)
    copy = tmp_path / "bundle"
    shutil.copytree(smollm2_bundle_path, copy)
    before = json.loads((copy / "metadata.json").read_text())
    write_control_recommendations(copy, report)
    after = json.loads((copy / "metadata.json").read_text())
    assert after["control_recommendations"] == {"anger": {"adopted": "clamp@generated", "mode": "clamp",
                                                          "scope": "generated", "value": 1.7, "scale": "normalized"}}
    assert after["controls_eval"]["adoption"] == {"anger": "r", "joy": "add meets every goal line"}
    assert {k: v for k, v in after.items() if k not in ("control_recommendations", "controls_eval")} == before


# ------------------------------------------------------------------------------ smoke on SmolLM2
@pytest.mark.slow
def test_eval_controls_cli_on_smollm2(smollm2_bundle_path, tmp_path, capsys):
    from conftest import run_cli

    from emolab.core.models import chat_prompt_ids, load_model
    from emolab.evaluate.controls import PROMPTED_INSTRUCTION
    from emolab.extraction.prompts import read_prompts

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(smollm2_bundle_path, bundle_dir)
    out = tmp_path / "out"
    code, stdout, _ = run_cli([
        "eval", "--controls", "add,add@generated,clamp,clamp:same@generated", "--bundle", str(bundle_dir),
        "--emotions", "joy,anger", "--prompts", "2", "--max-new-tokens", "8", "--calibration-prompts", "2",
        "--judge-train-per-class", "60", "--judge-test-per-class", "20", "--output", str(out),
        "--write-recommendations"], capsys)
    assert code == 0, stdout
    report = json.loads((out / "report.json").read_text())
    names = ["prompted", "add", "add@generated", "clamp:matched", "clamp:same@generated"]
    assert [(c["emotion"], c["control"]) for c in report["conditions"]] == [(None, "unsteered")] + [
        (e, n) for e in ("joy", "anger") for n in names]
    assert report["n_prompts"] == 2 and report["prompt_set"] == "heldout"
    bundle = EmotionBundle.load(bundle_dir)
    recs = bundle.metadata["alpha_recommendations"]
    for row in report["rows"]:
        want = {"prompted": None, "add": recs[row["emotion"]], "add@generated": recs[row["emotion"]],
                "clamp:matched": report["calibration"][row["emotion"]]["matched"],
                "clamp:same@generated": recs[row["emotion"]]}[row["control"]]
        assert row["value"] == want and set(row["checks"]) == {"delta", "hit_rate", "perplexity", "degenerate",
                                                                "question"}
    assert set(report["adoption"]) == {"joy", "anger"} and missing_images(out / "controls.md") == []

    # Every reply is the one its steering gives alone: greedy, same prompt ids, no batch effects that matter here.
    model, tokenizer = load_model("smollm2")
    steerer = HFSteerer(model, bundle)
    prompts = read_prompts("heldout")[:2]
    texts = {(c["emotion"], c["control"]): c["texts"] for c in report["conditions"]}

    def alone(messages, steering):
        ids = chat_prompt_ids(tokenizer, messages)
        with torch.no_grad():
            cont = generate(model, tokenizer, [ids], steerer=steerer, steerings=[steering], max_new_tokens=8)[0]
        return tokenizer.decode(cont, skip_special_tokens=True)

    k = bundle.emotions.index("joy")
    user = [{"role": "user", "content": prompts[0]}]
    system = [{"role": "system", "content": PROMPTED_INSTRUCTION.format(adjective="joyful")}]
    assert texts[(None, "unsteered")][0] == alone(user, None)
    assert texts[("joy", "prompted")][0] == alone(system + user, None)
    assert texts[("joy", "add")][0] == alone(user, Steering(((k, recs["joy"]),)))
    level = report["calibration"]["joy"]["matched"]
    assert texts[("joy", "clamp:matched")][0] == alone(user, Steering(((k, level),), ((k, "clamp"),)))
    assert texts[("joy", "clamp:same@generated")][0] == alone(
        user, Steering(((k, recs["joy"]),), ((k, "clamp"),), "generated"))

    # --write-recommendations into the copy: only the controls keys change
    meta = json.loads((bundle_dir / "metadata.json").read_text())
    committed = json.loads((smollm2_bundle_path / "metadata.json").read_text())
    assert {k: v for k, v in meta.items() if k not in ("control_recommendations", "controls_eval")} == committed
    assert set(meta["control_recommendations"]) == {e for e, a in report["adoption"].items() if a["adopted"]}

    # bad flags: one line naming the flag
    for argv, words in ((["--controls", "clamp:loud"], "--controls"), (["--controls", "add", "--alphas", "1"],
                                                                        "--alphas"),
                        (["--controls", "add", "--prompt-set", "tune", "--prompts-file", "x.txt"], "--prompts-file")):
        code, _, err = run_cli(["eval", *argv, "--bundle", str(bundle_dir)], capsys)
        assert code == 2 and words in err and "Traceback" not in err, err
