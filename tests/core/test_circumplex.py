"""Valence and arousal: derived from the emotion vectors and published ratings, stored, steered by name."""

from __future__ import annotations

import numpy as np
import pytest

from emolab.core.bundle import EmotionBundle
from emolab.core.circumplex import NRC_VAD, circumplex_frame, derive, fit_derived
from emolab.core.steering import Steering

EMOTIONS = list(NRC_VAD)


def _bundle(seed=0, emotion_layers=None):
    rng = np.random.default_rng(seed)
    vectors = {e: rng.normal(size=(3, 16)).astype(np.float32) for e in EMOTIONS}
    meta = {"num_layers": 8, "residual_norm": [5.0, 6.0, 7.0], "search_layers": [2, 3, 4]}
    if emotion_layers:
        meta["emotion_layers"] = emotion_layers
        for e, layers in emotion_layers.items():
            for k, layer in enumerate([2, 3, 4]):
                if layer not in layers:
                    vectors[e][k] = 0
    return EmotionBundle(EMOTIONS, [2, 3, 4], vectors, meta)


def test_directions_are_the_rating_weighted_sum_of_unit_vectors():
    bundle = _bundle()
    vectors, meta = fit_derived(bundle)
    for axis, name in enumerate(("valence", "arousal")):
        y = np.array([NRC_VAD[e][axis] for e in EMOTIONS])
        for k in range(3):
            units = np.stack([bundle.vectors[e][k] / np.linalg.norm(bundle.vectors[e][k]) for e in EMOTIONS])
            w = (y - y.mean()) @ units
            length = np.mean([np.linalg.norm(bundle.vectors[e][k]) for e in EMOTIONS])
            np.testing.assert_allclose(vectors[name][k], w / np.linalg.norm(w) * length, rtol=1e-5, atol=1e-6)
            r = np.corrcoef(units @ (w / np.linalg.norm(w)), y)[0, 1]
            assert meta[name]["fit_r"][k] == pytest.approx(r, abs=1e-4)
        assert "Mohammad" in meta[name]["source"] and meta[name]["coordinates"]["joy"] == NRC_VAD["joy"][axis]


def test_stored_loaded_and_steered_by_name_after_the_emotions(tmp_path):
    bundle = derive(_bundle(emotion_layers={"sadness": [2]}))
    assert bundle.steering_names == [*EMOTIONS, "valence", "arousal"]
    folder = bundle.save(tmp_path / "b")
    assert (folder / "valence_derived.npy").exists() and (folder / "arousal_derived.npy").exists()
    loaded = EmotionBundle.load(folder)
    np.testing.assert_array_equal(loaded.derived["valence"], bundle.derived["valence"])
    without = EmotionBundle.load(_bundle(emotion_layers={"sadness": [2]}).save(tmp_path / "plain"))
    assert loaded.fingerprint() != without.fingerprint()  # the derived directions steer: another fingerprint
    basis = loaded.steering_basis("normalized", derived=True)
    assert basis.shape == (3, 8, 16)
    np.testing.assert_allclose(np.linalg.norm(basis[:, 6], axis=1), [0.5, 0.6, 0.7], rtol=1e-5)  # 0.1 x residual norm
    np.testing.assert_array_equal(loaded.steering_basis("normalized"), basis[:, :6])  # emotions unchanged
    steering = Steering.from_body({"steering": ["valence", 0.5, "joy", 1.0]}, loaded.steering_names)
    assert steering.pairs == ((6, 0.5), (3, 1.0))
    # a copy without derived directions drops them from disk and metadata
    plain = EmotionBundle(loaded.emotions, loaded.chosen_layers, loaded.vectors, loaded.metadata)
    plain.save(folder)
    assert not list(folder.glob("*_derived.npy")) and EmotionBundle.load(folder).derived is None


def test_circumplex_frame_and_refusals():
    frame = circumplex_frame(derive(_bundle()))
    assert list(frame.emotion) == EMOTIONS and frame.valence_projection.between(-1, 1).all()
    few = EmotionBundle(["joy", "fear"], [2], {"joy": np.ones((1, 4), np.float32), "fear": -np.ones((1, 4), np.float32)},
                        {"num_layers": 4})
    with pytest.raises(ValueError, match=">= 3 emotions"):
        fit_derived(few)


def test_committed_bundle_steers_valence_and_arousal():
    bundle = EmotionBundle.load("vectors/smollm2")
    assert bundle.steering_names[-2:] == ["valence", "arousal"]
    frame = circumplex_frame(bundle).set_index("emotion")
    assert frame.loc["joy", "valence_projection"] > 0 > frame.loc["sadness", "valence_projection"]
    assert frame.loc["sadness", "arousal_projection"] < frame.loc["anger", "arousal_projection"]
