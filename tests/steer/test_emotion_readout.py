"""The emotion readout, in-process: exact against a hand-computed projection; the reference recorded at extraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emolab.core.bundle import EmotionBundle
from emolab.core.readout import READOUT_KEY, ReadoutReference, readout_scale, unit_directions
from emolab.steer.readout import EmotionReadout

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "goemotions"
EMOTIONS = ["anger", "joy", "sadness"]


def _bundle(layers=(1, 2), hidden=128, reference=True, emotion_layers=None, seed=0):
    rng = np.random.default_rng(seed)
    vectors = {e: rng.normal(size=(len(layers), hidden)).astype(np.float32) for e in EMOTIONS}
    meta = {"num_layers": 4, "residual_norm": [10.0, 20.0, 30.0, 40.0], "search_layers": [0, 1, 2, 3]}
    if emotion_layers:
        meta["emotion_layers"] = emotion_layers
    bundle = EmotionBundle(EMOTIONS, list(layers), vectors, meta)
    if reference:
        ref = ReadoutReference(list(layers), rng.normal(size=(len(layers), 3)), rng.uniform(0.5, 2, size=(len(layers), 3)),
                               100, "hand-made")
        bundle.metadata[READOUT_KEY] = ref.to_metadata()
    return bundle


@pytest.mark.parametrize("reference, emotion_layers", [(True, None), (True, {"joy": [2]}), (False, None)])
def test_readout_equals_the_projection_computed_by_hand(tiny, reference, emotion_layers):
    model, tokenizer = tiny
    bundle = _bundle(reference=reference, emotion_layers=emotion_layers)
    result = EmotionReadout(model, tokenizer, bundle).text("I can't believe they cancelled the trip again.")
    with torch.no_grad():
        ids = torch.tensor([result.token_ids])
        states = model(input_ids=ids, output_hidden_states=True).hidden_states
    ref = bundle.metadata.get(READOUT_KEY)
    expected = np.zeros((len(result.token_ids), 3))
    for e, emotion in enumerate(EMOTIONS):
        layers = emotion_layers.get(emotion, bundle.chosen_layers) if emotion_layers else bundle.chosen_layers
        for layer in layers:
            row = bundle.chosen_layers.index(layer)
            v = bundle.vectors[emotion][row].astype(np.float64)
            proj = states[layer + 1][0].double().numpy() @ (v / np.linalg.norm(v))
            if ref:
                proj = (proj - ref["mean"][row][e]) / ref["std"][row][e]
            else:  # no reference: a fraction of the layer's residual norm, not centred
                proj = proj / bundle.metadata["residual_norm"][bundle.search_layers.index(layer)]
            expected[:, e] += proj / len(layers)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-4)
    assert result.scale.kind == ("standardized" if reference else "residual_norm")
    assert result.tokens[0] == tokenizer.decode([result.token_ids[0]])
    frame = result.frame()
    assert list(frame.columns) == ["position", "token", "sink", *EMOTIONS] and len(frame) == len(result.token_ids)


def test_a_bundle_without_reference_or_norms_reads_raw_projections():
    bundle = _bundle(reference=False)
    bundle.metadata.pop("residual_norm")
    scale = readout_scale(bundle)
    assert scale.kind == "raw" and "neither a readout reference nor residual norms" in scale.meaning


def test_chat_readout_marks_each_message(tiny):
    model, tokenizer = tiny
    readout = EmotionReadout(model, tokenizer, _bundle())
    messages = [{"role": "user", "content": "My dog died this morning."}, {"role": "assistant", "content": "I am so sorry."}]
    result = readout.chat(messages)
    roles = [role for role, _, _ in result.segments]
    assert roles == ["user", "assistant"]
    assert result.segments[0][1] == 0 and result.segments[-1][2] == len(result.token_ids)
    assert all(a[2] == b[1] for a, b in zip(result.segments, result.segments[1:], strict=False))
    assert set(result.frame()["role"]) == {"user", "assistant"}
    assert set(result.mean()) == set(EMOTIONS)


def test_extraction_records_the_readout_reference(tiny, tmp_path):
    from emolab.core.models import pad_token_id
    from emolab.extraction import ExtractConfig, extract
    from emolab.extraction.data import build_dataset, load_records
    from emolab.extraction.projections import token_projections

    model, tokenizer = tiny
    config = ExtractConfig(model="tiny-qwen3-in-memory", emotions=tuple(EMOTIONS), layers="all", window=2,
                           batch_size=4, data=str(FIXTURE_DIR), test_size=0.4, seed=3, output=str(tmp_path / "b"),
                           progress=False)
    bundle = extract(config, model=model, tokenizer=tokenizer)
    loaded = EmotionBundle.load(tmp_path / "b")
    ref = ReadoutReference.from_metadata(loaded.metadata[READOUT_KEY], loaded)
    assert readout_scale(loaded).kind == "standardized" and "held-out" in ref.source
    # The same statistics, recomputed from every held-out token with the first (sink) token left out.
    records, source = load_records(config.data)
    ds = build_dataset(records, list(EMOTIONS), test_size=config.test_size, seed=config.seed, source=source)
    seqs = tokenizer(ds.val_texts, add_special_tokens=True, truncation=True, max_length=128)["input_ids"]
    projections, sinks = token_projections(model, seqs, bundle.chosen_layers, unit_directions(bundle),
                                           pad_id=pad_token_id(tokenizer))
    values = np.concatenate(projections).astype(np.float64)
    keep = ~np.concatenate(sinks)
    for row in range(len(bundle.chosen_layers)):
        kept = values[keep[:, row], row]
        np.testing.assert_allclose(ref.mean[row], kept.mean(axis=0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ref.std[row], kept.std(axis=0, ddof=1), rtol=1e-5, atol=1e-5)
    # and a readout of a held-out text on that scale is centred near zero on average
    scores = np.concatenate([EmotionReadout(model, tokenizer, loaded).text(t).scores for t in ds.val_texts])
    assert np.all(np.abs(scores.mean(axis=0)) < 0.5)
