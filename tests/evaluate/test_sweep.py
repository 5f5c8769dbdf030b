"""``emolab eval``: exact metrics, the recommendation rule, the alpha scales, and a CLI smoke run on SmolLM2."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from markdown_links import linked_images, missing_images

from emolab.core.bundle import NORMALIZED_FRACTION, BundleError, EmotionBundle
from emolab.evaluate import DEFAULT_PROMPTS
from emolab.evaluate.metrics import (
    continuation_perplexity,
    distinct_n,
    is_degenerate,
    recommend_alpha,
    repeated_fraction,
    words,
)


# ------------------------------------------------------------------------------ text metrics
def test_words_split_punctuation_into_single_marks():
    assert words("Hello, World!!") == ["hello", ",", "world", "!", "!"]


def test_distinct_n_by_hand():
    tokens = "the cat the cat sat".split()
    assert distinct_n(tokens, 1) == 3 / 5  # the, cat, sat
    assert distinct_n(tokens, 2) == 3 / 4  # (the cat) x2, (cat the), (cat sat)
    assert distinct_n(tokens, 5) == 1.0
    assert distinct_n(tokens, 6) == 0.0  # no 6-gram at all
    assert distinct_n([], 1) == 0.0


def test_repetition_and_degeneration_by_hand():
    loop = "so sad so sad so sad so sad".split()  # 4-grams: 5, of which 2 distinct -> 3/5 repeat
    assert repeated_fraction(loop) == pytest.approx(3 / 5)
    assert is_degenerate(loop)
    fluent = words("The train was on time, and I read a book on the way to work.")
    assert repeated_fraction(fluent) == 0.0 and not is_degenerate(fluent)
    assert is_degenerate(["ok", "."])  # under three words
    assert is_degenerate(words("!!!!!!!!!!"))


def test_recommendation_rule():
    alphas = [1.0, 2.0, 4.0, 8.0]
    # ppl limit 2 x 10 = 20; degenerate limit 0.05 + 0.1 = 0.15
    assert recommend_alpha(alphas, [11, 15, 19.9, 40], [0, 0, 0.1, 0.5], 10.0, 0.05) == 4.0
    assert recommend_alpha(alphas, [11, 25, 12, 12], [0, 0, 0, 0], 10.0, 0.0) == 1.0  # stops at the first failure
    assert recommend_alpha(alphas, [11, 12, 13, 14], [0, 0.2, 0, 0], 10.0, 0.0) == 1.0  # degeneration fails 2
    assert recommend_alpha(alphas, [30, 12, 12, 12], [0, 0, 0, 0], 10.0, 0.0) is None
    assert recommend_alpha([-2.0, 3.0], [11, 11], [0, 0], 10.0, 0.0, ppl_factor=1.5) == 3.0  # negatives ignored


def test_perplexity_matches_a_hand_computation(tiny_llama_path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()
    prompts, conts = [[5, 17, 230], [9, 8]], [[41, 42, 43, 44], [7]]
    got = continuation_perplexity(model, prompts + [[3]], conts + [[]], batch_size=3)
    for prompt, cont, value in zip(prompts, conts, got[:2], strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + cont])).logits[0].double()
        nll = 0.0
        for k, token in enumerate(cont):
            row = logits[len(prompt) - 1 + k]
            nll -= float(row[token] - torch.logsumexp(row, dim=0))
        assert value == pytest.approx(math.exp(nll / len(cont)), rel=1e-4)
    assert math.isnan(got[2])  # an empty continuation has no perplexity
    # Rows sharing prompts (an eval grid) run each prompt once and reuse its cache: same numbers.
    shared = continuation_perplexity(model, [prompts[0]] * 3 + [prompts[1]] * 2,
                                     [conts[0], [8], [], conts[1], [3, 4, 5]], batch_size=2)
    alone = [continuation_perplexity(model, [p], [c])[0] for p, c in
             zip([prompts[0]] * 3 + [prompts[1]] * 2, [conts[0], [8], [], conts[1], [3, 4, 5]], strict=True)]
    assert math.isnan(shared[2]) and math.isnan(alone[2])
    np.testing.assert_allclose([x for k, x in enumerate(shared) if k != 2], [x for k, x in enumerate(alone) if k != 2],
                               rtol=1e-4)


def test_default_prompts_are_enough_and_distinct():
    assert len(DEFAULT_PROMPTS) >= 20 and len(set(DEFAULT_PROMPTS)) == len(DEFAULT_PROMPTS)


# ------------------------------------------------------- alpha scales (EmotionBundle.steering_basis)
def _bundle(residual_norm=True, **meta) -> EmotionBundle:
    rng = np.random.default_rng(1)
    vectors = {e: rng.normal(size=(2, 8)).astype(np.float32) * s for e, s in (("anger", 1.0), ("joy", 30.0))}
    metadata = {"search_layers": [3, 4, 5], **meta}
    if residual_norm:
        metadata["residual_norm"] = [10.0, 20.0, 40.0]
    return EmotionBundle(["anger", "joy"], [4, 5], vectors, metadata)


def test_raw_scale_is_the_plain_basis_and_the_default_without_residual_norms():
    bundle = _bundle()
    np.testing.assert_array_equal(bundle.steering_basis("raw"), bundle.basis())
    # With residual norms recorded the default is the normalized scale; without them (reference-tool
    # bundles) it is raw; metadata alpha_scale overrides both.
    assert bundle.alpha_scale == "normalized"
    np.testing.assert_array_equal(bundle.steering_basis(), bundle.steering_basis("normalized"))
    plain = _bundle(residual_norm=False)
    assert plain.alpha_scale == "raw"
    np.testing.assert_array_equal(plain.steering_basis(), plain.basis())
    assert _bundle(alpha_scale="raw").alpha_scale == "raw"


def test_normalized_scale_sets_every_vector_to_a_fraction_of_the_residual_norm():
    bundle = _bundle()
    basis = bundle.steering_basis("normalized")
    lengths = np.linalg.norm(basis, axis=2)  # [layers, emotions]
    np.testing.assert_allclose(lengths, NORMALIZED_FRACTION * np.array([[20.0, 20.0], [40.0, 40.0]]), rtol=1e-6)
    raw = bundle.basis()
    cos = (basis * raw).sum(axis=2) / (lengths * np.linalg.norm(raw, axis=2))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-6)  # same directions
    assert _bundle(alpha_scale="normalized").steering_basis().tobytes() == basis.tobytes()


def test_normalized_scale_needs_residual_norm_and_known_names():
    with pytest.raises(BundleError, match="residual_norm"):
        _bundle(residual_norm=False).steering_basis("normalized")
    with pytest.raises(BundleError, match="unknown alpha scale"):
        _bundle().steering_basis("percent")


# ------------------------------------------------------------------------------ CLI smoke run
@pytest.mark.slow
def test_eval_cli_smoke_on_smollm2(smollm2_bundle_path, tmp_path, capsys):
    import torch

    from emolab.cli import main
    from emolab.core.models import load_model
    from emolab.evaluate.sweep import user_prompt_ids

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(smollm2_bundle_path, bundle_dir)
    before = {p.name: p.read_bytes() for p in bundle_dir.glob("*.npy")}
    meta_before = json.loads((bundle_dir / "metadata.json").read_text())
    out = tmp_path / "out"
    rc = main([
        "eval", "--model", "smollm2", "--bundle", str(bundle_dir), "--emotions", "joy,anger", "--alphas", "2,8",
        "--alpha-scale", "normalized", "--prompts", "2", "--max-new-tokens", "8", "--judge-train-per-class", "60",
        "--judge-test-per-class", "20", "--output", str(out), "--write-recommendations",
    ])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert [(c["emotion"], c["alpha"]) for c in report["conditions"]] == [
        (None, 0.0), ("joy", 2.0), ("joy", 8.0), ("anger", 2.0), ("anger", 8.0)]
    assert all(len(c["texts"]) == 2 and len(c["judge"]) == 2 for c in report["conditions"])
    assert report["scale"] == "normalized" and report["judge"]["n_train"] == 360
    for name in ("effect_curves.png", "fluency.png", "confusion.png"):
        assert (out / name).stat().st_size > 1000
    assert linked_images(out / "tables.md") == ["effect_curves.png", "fluency.png", "confusion.png"]
    assert missing_images(out / "tables.md") == []

    # The baseline is plain greedy decoding of the chat-templated prompt, token for token.
    model, tokenizer = load_model("smollm2")
    ids = user_prompt_ids(tokenizer, list(DEFAULT_PROMPTS[:1]))[0]
    with torch.no_grad():
        plain = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)[0, len(ids):]
    assert report["conditions"][0]["texts"][0] == tokenizer.decode(plain, skip_special_tokens=True)

    # Recommendations land in metadata.json; nothing else changes.
    meta = json.loads((bundle_dir / "metadata.json").read_text())
    recs = {e: a for e, a in report["alpha_recommendations"].items() if a is not None}
    assert meta["alpha_recommendations"] == recs and meta["alpha_recommendations_scale"] == "normalized"
    eval_keys = ("alpha_recommendations", "alpha_recommendations_scale", "steering_eval")
    assert {k: v for k, v in meta.items() if k not in eval_keys} == {
        k: v for k, v in meta_before.items() if k not in eval_keys}  # the committed bundle has an earlier eval
    assert {p.name: p.read_bytes() for p in bundle_dir.glob("*.npy")} == before
    assert "alpha_recommendations" in capsys.readouterr().out


def test_eval_cli_rejects_bad_flags(capsys):
    from emolab.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "--alphas", "two"])
    assert "--alphas takes comma-separated numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--prompts", "0"])
    assert "--prompts must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--prompts", "500"])
    assert "--prompts: only 24 prompts available" in capsys.readouterr().err


def test_the_emotions_to_measure_are_the_bundles_or_a_named_error(smollm2_bundle_path):
    from emolab.evaluate.sweep import EvalError, bundle_and_emotions

    bundle, emotions = bundle_and_emotions(smollm2_bundle_path, None)
    assert emotions == bundle.emotions and bundle.full_sweep is None
    assert bundle_and_emotions(smollm2_bundle_path, ["fear", "joy"])[1] == ["fear", "joy"]
    with pytest.raises(EvalError, match=r"\['awe'\] are not among the bundle's emotions") as failure:
        bundle_and_emotions(smollm2_bundle_path, ["joy", "awe"])
    assert failure.value.setting == "emotions"
