"""Valence and arousal: two directions derived from a bundle's emotion vectors and published coordinates.

The circumplex model places emotions on a valence (unpleasant-pleasant) by arousal (calm-excited) plane.
emolab fits one direction per axis at each chosen layer from the bundle's own emotion vectors and the
emotions' published coordinates: the valence direction is ``sum_e (y_e - mean y) * u_e`` over the emotions
that steer the layer (``u_e`` their unit vectors, ``y_e`` their published valence), scaled to the emotions'
mean vector length there; arousal likewise. It is the direction along which the emotion vectors' projections
covary with the published ratings (no fitting beyond that, six points do not allow more); how well the
emotion vectors' own projections on it reproduce the ratings is recorded per layer (``fit_r``).

Coordinates: the NRC Valence, Arousal, and Dominance Lexicon v1 (Saif M. Mohammad, "Obtaining Reliable Human
Ratings of Valence, Arousal, and Dominance for 20,000 English Words", ACL 2018), the entries for the emotion
words themselves, on its 0-1 scale. The derived directions are stored in the bundle (``<name>_derived.npy``
and metadata ``derived``) and are steered by name like an emotion (``["valence", 0.5]``); they steer nothing
unless asked for, and the emotions' own ids are unchanged (the derived ones come after them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from emolab.core.bundle import EmotionBundle

__all__ = ["DERIVED", "NRC_VAD", "NRC_VAD_SOURCE", "circumplex_frame", "derive", "fit_derived"]

DERIVED = ("valence", "arousal")
NRC_VAD_SOURCE = ("NRC VAD Lexicon v1 (Mohammad, ACL 2018): valence and arousal ratings of the emotion words, "
                  "0-1 scale")
# (valence, arousal) of each emotion word in the NRC VAD Lexicon v1.
NRC_VAD = {
    "anger": (0.167, 0.865), "disgust": (0.052, 0.775), "fear": (0.073, 0.840),
    "joy": (0.980, 0.824), "sadness": (0.052, 0.288), "surprise": (0.875, 0.875),
}


def fit_derived(bundle: EmotionBundle, coordinates: dict[str, tuple[float, float]] = NRC_VAD
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``({"valence": [L, H], "arousal": [L, H]}, metadata)`` from the bundle's emotions that have coordinates.

    Needs at least three such emotions with a spread of ratings on each axis; a layer where fewer than two
    of them steer gets a zero vector (the axis does not steer there)."""
    known = [e for e in bundle.emotions if e in coordinates]
    if len(known) < 3:
        raise ValueError(f"valence/arousal need >= 3 emotions with published coordinates; the bundle has {known}")
    mask = bundle.steering_mask()
    vectors = {name: np.zeros((len(bundle.chosen_layers), bundle.hidden), dtype=np.float32) for name in DERIVED}
    fit_r: dict[str, list[float | None]] = {name: [] for name in DERIVED}
    for k in range(len(bundle.chosen_layers)):
        here = [e for e in known if mask[k, bundle.emotions.index(e)]]
        if len(here) < 2:
            for name in DERIVED:
                fit_r[name].append(None)
            continue
        raw = np.stack([bundle.vectors[e][k].astype(np.float64) for e in here])
        lengths = np.linalg.norm(raw, axis=1)
        units = raw / np.where(lengths == 0, 1.0, lengths)[:, None]
        for axis, name in enumerate(DERIVED):
            y = np.array([coordinates[e][axis] for e in here])
            w = (y - y.mean()) @ units
            norm = np.linalg.norm(w)
            if norm == 0:
                fit_r[name].append(None)
                continue
            vectors[name][k] = (w / norm * lengths.mean()).astype(np.float32)
            projections = units @ (w / norm)
            spread = projections.std() * y.std()
            fit_r[name].append(round(float(np.mean((projections - projections.mean()) * (y - y.mean())) / spread), 4)
                               if spread > 0 else None)
    meta = {name: {"source": NRC_VAD_SOURCE if coordinates is NRC_VAD else "user coordinates",
                   "coordinates": {e: coordinates[e][axis] for e in known},
                   "method": "sum over emotions of (rating - mean rating) x unit emotion vector, per chosen layer, "
                             "scaled to the emotions' mean vector length",
                   "fit_r": fit_r[name]}
            for axis, name in enumerate(DERIVED)}
    return vectors, meta


def derive(bundle: EmotionBundle, coordinates: dict[str, tuple[float, float]] = NRC_VAD) -> EmotionBundle:
    """A copy of ``bundle`` with valence and arousal directions (replacing any it had)."""
    from emolab.core.bundle import EmotionBundle

    vectors, meta = fit_derived(bundle, coordinates)
    return EmotionBundle(list(bundle.emotions), list(bundle.chosen_layers), dict(bundle.vectors),
                         {**bundle.metadata, "derived": meta}, bundle.full_sweep, derived=vectors)


def circumplex_frame(bundle: EmotionBundle) -> pd.DataFrame:
    """Per emotion: its published valence and arousal, and where its own vector lies on the derived axes
    (the mean over chosen layers of its unit vector's projection on each unit axis)."""
    import pandas as pd

    derived = bundle.derived or fit_derived(bundle)[0]
    coordinates = {e: tuple(v) for e, v in NRC_VAD.items()}
    if bundle.metadata.get("derived"):
        given = bundle.metadata["derived"]
        coordinates = {e: (given["valence"]["coordinates"][e], given["arousal"]["coordinates"][e])
                       for e in given["valence"]["coordinates"]}
    rows = []
    for e in bundle.emotions:
        projected = []
        for name in DERIVED:
            values = []
            for k in range(len(bundle.chosen_layers)):
                v, w = bundle.vectors[e][k].astype(np.float64), derived[name][k].astype(np.float64)
                if np.any(v) and np.any(w):
                    values.append(float(v @ w / np.linalg.norm(v) / np.linalg.norm(w)))
            projected.append(float(np.mean(values)) if values else float("nan"))
        published = coordinates.get(e, (float("nan"), float("nan")))
        rows.append({"emotion": e, "valence": published[0], "arousal": published[1],
                     "valence_projection": projected[0], "arousal_projection": projected[1]})
    return pd.DataFrame(rows)
