"""Every vector method, exactly: pure functions on hand-computed inputs, and whole extractions on a tiny
random Qwen3 checked against transformers' own ``hidden_states`` (one forward per sequence, no batching)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emolab.core.bundle import EmotionBundle
from emolab.core.models import decoder_layers
from emolab.extraction import ExtractConfig, ExtractError, extract
from emolab.extraction.capture import collect_span_activations
from emolab.extraction.data import build_dataset, load_records
from emolab.extraction.methods import (
    contrast_against_others,
    mean_difference,
    normalize_to_residual,
    paired_differences,
    principal_direction,
    remove_shared_direction,
)
from emolab.extraction.prompts import contrastive_pairs, load_instructions, read_prompts, steering_file

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "goemotions"
EMOTIONS = ("anger", "joy", "sadness")


# ----------------------------------------------------------------------------- pure functions
def test_paired_differences_and_their_mean_by_hand():
    emotional = np.array([[[1.0, 2.0]], [[3.0, 4.0]]], dtype=np.float32)  # 2 pairs, 1 layer, hidden 2
    neutral = np.array([[[0.0, 1.0]], [[1.0, 1.0]]], dtype=np.float32)
    diffs = paired_differences(emotional, neutral)
    np.testing.assert_array_equal(diffs, [[[1.0, 1.0]], [[2.0, 3.0]]])
    np.testing.assert_array_equal(mean_difference(diffs), [[1.5, 2.0]])
    with pytest.raises(ExtractError, match="one shape"):
        paired_differences(emotional, neutral[:1])


def test_principal_direction_by_hand():
    # D = [[2, 0], [0, 1]]: D^T D = diag(4, 1), so the top axis is (1, 0); the mean (1, 0.5) projects
    # onto it with length 1, so the vector is (1, 0), not the mean.
    np.testing.assert_allclose(principal_direction(np.array([[[2.0, 0.0]], [[0.0, 1.0]]])), [[1.0, 0.0]], atol=1e-7)
    # The sign follows the mean: D = [[-3, 1], [-3, -1]] has axis +-(1, 0) and mean (-3, 0).
    np.testing.assert_allclose(principal_direction(np.array([[[-3.0, 1.0]], [[-3.0, -1.0]]])), [[-3.0, 0.0]],
                               atol=1e-6)


def test_contrast_against_others_by_hand():
    vectors = np.array([[[3.0, 0.0]], [[0.0, 3.0]], [[0.0, 0.0]]])
    np.testing.assert_allclose(contrast_against_others(vectors), [[[3.0, -1.5]], [[-1.5, 3.0]], [[-1.5, -1.5]]])
    with pytest.raises(ExtractError, match="two emotions"):
        contrast_against_others(vectors[:1])


def test_remove_shared_direction_by_hand():
    # layer 0: mean (1, 1) -> each vector loses its component along (1, 1)/sqrt(2);
    # layer 1: the vectors cancel (as mean differences of balanced classes always do), so there is no
    # shared direction, only rounding noise, and nothing changes.
    vectors = np.array([[[2.0, 0.0], [1.0, 0.0]], [[0.0, 2.0], [-1.0, 0.0]]])
    out = remove_shared_direction(vectors)
    np.testing.assert_allclose(out[:, 0], [[1.0, -1.0], [-1.0, 1.0]], atol=1e-6)
    np.testing.assert_array_equal(out[:, 1], vectors[:, 1])


def test_normalize_to_residual_by_hand():
    vectors = np.array([[[3.0, 4.0], [0.0, 0.0]]])  # 1 emotion, 2 layers
    out = normalize_to_residual(vectors, np.array([100.0, 50.0]))
    np.testing.assert_allclose(out, [[[6.0, 8.0], [0.0, 0.0]]])  # 0.1 x 100 = length 10; zero stays zero


def test_steering_prompt_sets_are_disjoint_and_instructions_parallel():
    sets = {name: read_prompts(name) for name in ("extract", "tune", "heldout")}
    assert [len(sets[n]) for n in ("extract", "tune", "heldout")] == [40, 48, 48]
    assert not set(sets["tune"]) & set(sets["heldout"])
    assert not set(sets["extract"]) & (set(sets["tune"]) | set(sets["heldout"]))
    instructions = load_instructions(list(EMOTIONS))
    assert {len(v) for v in instructions.values()} == {6}
    assert steering_file("answer_openings.txt").strip()


# ------------------------------------------------------------------------ tiny random model
def _states(model, ids: list[int]) -> np.ndarray:
    """``[3, seq, hidden]``: outputs of blocks 0-2 of one unpadded sequence (``hidden_states[L+1]``; the
    last block's entry is after the final norm, so the tests search layers 0-2 of the 4)."""
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return torch.stack(out.hidden_states[1:4])[:, 0].double().numpy()


def test_span_capture_equals_hidden_states(tiny):
    model, tokenizer = tiny
    seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("a b c d e f", "hello", "one two three")]
    spans = [(2, 5), (0, 1), (1, 3)]
    got = collect_span_activations(model, seqs, spans, [0, 2], pad_id=0, batch_size=2)
    for i, (seq, (lo, hi)) in enumerate(zip(seqs, spans, strict=True)):
        states = _states(model, seq)[[0, 2]]
        np.testing.assert_allclose(got["mean"][i], states[:, lo:hi].mean(axis=1), atol=1e-5)
        np.testing.assert_allclose(got["last"][i], states[:, hi - 1], atol=1e-5)
    with pytest.raises(ExtractError, match="span"):
        collect_span_activations(model, seqs, [(0, 7), (0, 1), (0, 1)], [0])


def test_span_mean_leaves_a_massive_activation_out(tiny):
    """A position the model blows up to 100x the others' norm (as SmolLM2 does to an attention sink, now and
    then at the second token) is left out of the mean at the layers after it; the last-token state is
    untouched and ``sink_ratio=None`` keeps the plain mean. (Layers 1 and 2 are read: transformers may record
    block 0's own output before the hook that makes the sink runs.)"""
    model, tokenizer = tiny
    seq = tokenizer("a b c d e f", add_special_tokens=False)["input_ids"]

    def sink(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, 1] *= 100.0
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = decoder_layers(model)[0].register_forward_hook(sink)
    try:
        states = _states(model, seq)[[1, 2]]
        got = collect_span_activations(model, [seq], [(0, len(seq))], [1, 2], pad_id=0)
        plain = collect_span_activations(model, [seq], [(0, len(seq))], [1, 2], pad_id=0, sink_ratio=None)
    finally:
        handle.remove()
    content = [p for p in range(len(seq)) if p != 1]
    np.testing.assert_allclose(got["mean"][0], states[:, content].mean(axis=1), atol=1e-4)
    np.testing.assert_allclose(plain["mean"][0], states.mean(axis=1), atol=1e-4)
    np.testing.assert_allclose(got["last"][0], states[:, -1], atol=1e-5)


def _config(tmp_path, **kwargs) -> ExtractConfig:
    return ExtractConfig(model="tiny", emotions=EMOTIONS, layers="0,1,2", window=2, batch_size=4, data=str(FIXTURE_DIR),
                         test_size=0.4, seed=3, output=str(tmp_path / "bundle"), progress=False, **kwargs)


def test_meandiff_over_mean_positions_equals_a_recomputation(tiny, tmp_path):
    model, tokenizer = tiny
    config = _config(tmp_path, positions="mean")
    bundle = extract(config, model=model, tokenizer=tokenizer)
    records, source = load_records(config.data)
    ds = build_dataset(records, list(EMOTIONS), test_size=config.test_size, seed=config.seed, source=source)
    acts = np.stack([_states(model, tokenizer(t, add_special_tokens=True, truncation=True, max_length=128)
                             ["input_ids"])[:, 1:].mean(axis=1) for t in ds.train_texts])  # first token left out
    want = np.stack([acts[ds.train_labels == e].mean(axis=0) - acts[ds.train_labels != e].mean(axis=0)
                     for e in range(3)])
    for e, emotion in enumerate(EMOTIONS):
        np.testing.assert_allclose(bundle.full_sweep[emotion], want[e], atol=2e-5)
    meta = EmotionBundle.load(config.output).metadata
    assert (meta["method"], meta["positions"], meta["project_out_shared"]) == ("meandiff", "mean", False)
    assert meta["mean_skips"].startswith("the first token and attention sinks")  # how the mean was pooled
    assert "mean_skips" not in _config(tmp_path, positions="last").recipe()


def test_mean_positions_read_each_text_once_and_probe_as_the_last_token_recipe(tiny, tmp_path):
    model, tokenizer = tiny
    calls = []
    handle = model.model.layers[0].register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        by_mean = extract(_config(tmp_path / "mean", positions="mean"), model=model, tokenizer=tokenizer)
        mean_calls = len(calls)
        calls.clear()
        by_last = extract(_config(tmp_path / "last", positions="last"), model=model, tokenizer=tokenizer)
    finally:
        handle.remove()
    meta = by_mean.metadata
    batches = -(-meta["n_train"] // 4) + -(-meta["n_val"] // 4)  # ceil per split, batch_size 4
    reference = -(-meta["n_val"] // 4)  # then one pass over the held-out texts for the readout reference
    assert mean_calls == len(calls) == batches + reference  # one forward per batch, as for last-token vectors
    # The probe and the residual norms read the last token either way: same layers, same numbers.
    assert by_mean.chosen_layers == by_last.chosen_layers
    np.testing.assert_allclose(meta["auc_matrix"], by_last.metadata["auc_matrix"], atol=1e-4)
    np.testing.assert_allclose(meta["residual_norm"], by_last.metadata["residual_norm"], rtol=1e-5)


@pytest.mark.parametrize("pca, against, shared", [(False, "neutral", False), (True, "neutral", False),
                                                 (False, "others", False), (False, "neutral", True)])
def test_contrastive_prompts_equal_a_recomputation(tiny, tmp_path, pca, against, shared):
    model, tokenizer = tiny
    config = _config(tmp_path, method="contrastive", pca=pca, against=against, contrastive_turns=2,
                     project_out_shared=shared)
    bundle = extract(config, model=model, tokenizer=tokenizer)
    turns = read_prompts("extract")[:2]
    openings = [line for line in steering_file("answer_openings.txt").splitlines() if line.strip()]
    answers = [tokenizer(o.strip(), add_special_tokens=False)["input_ids"] for o in openings]
    seqs, spans, keys = contrastive_pairs(tokenizer, list(EMOTIONS), turns, answers, load_instructions(list(EMOTIONS)))
    pooled = {key: _states(model, s)[:, lo:hi].mean(axis=1) for s, (lo, hi), key in zip(seqs, spans, keys, strict=True)}
    want = []
    for emotion in EMOTIONS:
        diffs = np.stack([pooled[key] - pooled[("neutral", key[1], key[2])] for key in keys if key[0] == emotion])
        assert len(diffs) == 2 * 6  # turns x phrasings
        if pca:
            axes = [np.linalg.svd(diffs[:, layer])[2][0] for layer in range(3)]
            want.append(np.stack([a * (a @ diffs[:, layer].mean(axis=0)) for layer, a in enumerate(axes)]))
        else:
            want.append(diffs.mean(axis=0))
    want = np.stack(want)
    if against == "others":
        want = np.stack([want[e] - np.delete(want, e, axis=0).mean(axis=0) for e in range(3)])
    if shared:
        unit = want.mean(axis=0) / np.linalg.norm(want.mean(axis=0), axis=-1, keepdims=True)
        want = want - np.einsum("elh,lh->el", want, unit)[..., None] * unit
    for e, emotion in enumerate(EMOTIONS):
        np.testing.assert_allclose(bundle.full_sweep[emotion], want[e], atol=2e-5)
    meta = bundle.metadata
    assert (meta["method"], meta["positions"], meta["pca"], meta["against"]) == ("contrastive", "mean", pca, against)
    assert meta["contrastive_prompts"]["n_pairs_per_emotion"] == 12
    assert meta["residual_norm"] and len(meta["residual_norm"]) == 3  # GoEmotions last token, as for meandiff


def test_settings_that_belong_to_another_method_are_refused(tiny, tmp_path):
    model, tokenizer = tiny
    for kwargs, setting in [({"pca": True}, "pca"), ({"against": "others"}, "against"),
                            ({"method": "caa"}, "method"), ({"positions": "first"}, "positions"),
                            ({"project_out_shared": True}, "project_out_shared"), ({"labels": "fine"}, "labels")]:
        with pytest.raises(ExtractError) as info:
            extract(_config(tmp_path, **kwargs), model=model, tokenizer=tokenizer)
        assert info.value.setting == setting


def test_core_labels_are_the_vectors_of_the_core_dataset(tiny, tmp_path):
    model, tokenizer = tiny
    emotions = ("anger", "sadness", "disgust")
    config = ExtractConfig(model="tiny", emotions=emotions, layers="0,1", window=1, batch_size=4, data=str(FIXTURE_DIR),
                           test_size=0.5, seed=3, output=str(tmp_path / "core"), progress=False, labels="core")
    bundle = extract(config, model=model, tokenizer=tokenizer)
    records, source = load_records(config.data)
    ds = build_dataset(records, list(emotions), test_size=0.5, seed=3, source=source, labels="core")
    last = np.stack([_states(model, tokenizer(t, add_special_tokens=True, truncation=True, max_length=128)
                             ["input_ids"])[:2, -1] for t in ds.train_texts])
    for e, emotion in enumerate(emotions):
        want = last[ds.train_labels == e].mean(axis=0) - last[ds.train_labels != e].mean(axis=0)
        np.testing.assert_allclose(bundle.full_sweep[emotion], want, atol=2e-5)
    meta = EmotionBundle.load(config.output).metadata
    assert meta["labels"] == "core" and meta["dropped"]["not_core_label"] == 5
