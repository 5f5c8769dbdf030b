"""Steering candidates for tuning, and the grid bundle that lets one engine steer all of them at once.

A *candidate* is one fixed way to steer one emotion: a vector source (an extracted method, maybe a
composite), a set of layers, and one vector per layer on the normalized scale (length 0.1 x the
layer's mean residual norm, so alpha means the same push everywhere). A *condition* is a candidate at
an alpha, or the unsteered baseline.

The *grid bundle* is an ordinary bundle whose "emotions" are the candidates (``c0``, ``c1``, ...),
whose ``chosen_layers`` are the union of their layers, with zero rows where a candidate does not
steer (``emotion_layers``), on the raw scale: the vectors are already normalized, so a raw alpha is
the normalized alpha. Either backend then steers each request with one candidate, unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from emolab.core.bundle import EmotionBundle
from emolab.core.errors import EmolabError
from emolab.extraction.methods import normalize_to_residual

__all__ = ["Candidate", "TuneError", "VARIANT", "build_candidates", "grid_bundle", "parse_windows", "source_name",
           "variant_directions"]

# A composite variant: ``minus-joy-0.5`` = unit(v_e) - 0.5 unit(v_joy), layer by layer.
VARIANT = re.compile(r"minus-([a-z_]+)-([0-9]*\.?[0-9]+)")


class TuneError(EmolabError, ValueError):
    """Tune settings or inputs that cannot run."""


@dataclass
class Candidate:
    emotion: str
    source: str  # e.g. "meandiff-last" or "meandiff-last/minus-joy-0.5"
    layers: tuple[int, ...]
    vectors: np.ndarray  # [len(layers), hidden], normalized scale

    @property
    def key(self) -> str:
        return f"{self.emotion}|{self.source}|{format_layers(self.layers)}"


def format_layers(layers: tuple[int, ...] | list[int]) -> str:
    """``(12, 13, 14)`` -> ``12-14``; a single layer or a gappy set as ids."""
    layers = list(layers)
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def parse_windows(text: str) -> list[tuple[int, ...]]:
    """``12-14,13,10-18`` -> ``[(12, 13, 14), (13,), (10, ..., 18)]`` (``;`` also separates)."""
    windows = []
    for item in re.split(r"[,;]", text):
        item = item.strip()
        if not item:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not match:
            raise TuneError(f"{item!r} is not a layer (13) or a window (12-14)", setting="windows")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi < lo:
            raise TuneError(f"window {item!r} runs backwards", setting="windows")
        windows.append(tuple(range(lo, hi + 1)))
    if not windows:
        raise TuneError("no layer windows given", setting="windows")
    return windows


def source_name(metadata: dict) -> str:
    """The vector source a bundle's metadata describes: ``meandiff-last`` (old bundles), ``contrastive-mean-pca``,
    ``meandiff-mean-core`` (texts with the emotion's own label only), ..."""
    method = metadata.get("method", "meandiff")
    name = f"{method}-{metadata.get('positions', 'last')}"
    if method == "contrastive":
        name += "-pca" if metadata.get("pca") else ""
        name += "-others" if metadata.get("against") == "others" else ""
    name += "-noshared" if metadata.get("project_out_shared") else ""
    return name + ("-core" if metadata.get("labels") == "core" else "")


def variant_directions(sweep: np.ndarray, emotion: int, variant: str, names: list[str]) -> np.ndarray | None:
    """The direction of ``variant`` for one emotion, ``[n_layers, hidden]``; None where it does not apply.

    ``sweep``: raw vectors ``[n_emotions, n_layers, hidden]``. ``plain``: the emotion's own vector.
    ``minus-<other>-<lambda>``: ``unit(v_e) - lambda unit(v_other)`` at each layer (steer towards the
    emotion and away from another, e.g. the joy the unsteered model already shows).
    """
    if variant == "plain":
        return sweep[emotion]
    match = VARIANT.fullmatch(variant)
    if not match:
        raise TuneError(f"unknown variant {variant!r}: plain or minus-<emotion>-<weight>", setting="variants")
    other, weight = match.group(1), float(match.group(2))
    if other not in names:
        raise TuneError(f"variant {variant!r} names {other!r}, not one of {names}", setting="variants")
    if names.index(other) == emotion:
        return None

    def unit(v: np.ndarray) -> np.ndarray:
        v = v.astype(np.float64)
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)

    return (unit(sweep[emotion]) - weight * unit(sweep[names.index(other)])).astype(np.float32)


def build_candidates(
    sources: dict[str, EmotionBundle], emotions: list[str], windows: list[tuple[int, ...]], variants: list[str],
) -> list[Candidate]:
    """Every source x variant x window for each emotion, on the normalized scale.

    Each source is a bundle with a full sweep (``<emotion>_full_sweep.npy`` over ``search_layers``)
    and ``residual_norm``; windows must lie inside its search layers.
    """
    out = []
    for name, bundle in sources.items():
        if bundle.full_sweep is None:
            raise TuneError(f"the bundle of source {name!r} has no full sweep (<emotion>_full_sweep.npy) to tune "
                            "layers over; extract it with the full sweep saved", setting="bundle")
        norms = bundle.metadata.get("residual_norm")
        if norms is None:
            raise TuneError(f"the bundle of source {name!r} records no residual_norm", setting="bundle")
        search = bundle.search_layers
        missing = sorted({layer for w in windows for layer in w} - set(search))
        if missing:
            raise TuneError(f"layers {missing} are outside the searched layers {search} of source {name!r}",
                            setting="windows")
        absent = [e for e in emotions if e not in bundle.emotions]
        if absent:
            raise TuneError(f"source {name!r} has no vectors for {absent}", setting="emotions")
        sweep = np.stack([bundle.full_sweep[e] for e in bundle.emotions])
        for emotion in emotions:
            for variant in variants:
                direction = variant_directions(sweep, bundle.emotions.index(emotion), variant, bundle.emotions)
                if direction is None:
                    continue
                label = name if variant == "plain" else f"{name}/{variant}"
                for window in windows:
                    rows = [search.index(layer) for layer in window]
                    zero = [layer for layer, r in zip(window, rows, strict=True) if not np.any(direction[r])]
                    if zero:
                        raise TuneError(f"source {name!r} has a zero vector for {emotion} at layers {zero} (a tuned "
                                        "bundle's layers that emotion does not steer?)", setting="windows")
                    vectors = normalize_to_residual(direction[rows], np.asarray(norms, dtype=np.float64)[rows])
                    out.append(Candidate(emotion, label, tuple(window), vectors))
    return out


def grid_bundle(candidates: list[Candidate], model: str | None, num_layers: int | None) -> EmotionBundle:
    """A bundle steering candidate ``i`` as emotion ``c<i>`` on the raw scale (see the module docstring)."""
    if not candidates:
        raise TuneError("no candidates to steer")
    union = sorted({layer for c in candidates for layer in c.layers})
    hidden = candidates[0].vectors.shape[1]
    names = [f"c{i}" for i in range(len(candidates))]
    vectors, layers_of = {}, {}
    for name, cand in zip(names, candidates, strict=True):
        block = np.zeros((len(union), hidden), dtype=np.float32)
        for row, layer in enumerate(cand.layers):
            block[union.index(layer)] = cand.vectors[row]
        vectors[name], layers_of[name] = block, list(cand.layers)
    metadata = {"model": model, "num_layers": num_layers, "hidden": hidden, "search_layers": union,
                "alpha_scale": "raw", "emotion_layers": layers_of, "candidates": [c.key for c in candidates]}
    return EmotionBundle(emotions=names, chosen_layers=union, vectors=vectors, metadata=metadata)
