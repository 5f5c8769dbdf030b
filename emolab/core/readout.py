"""Reading an emotion back out of the residual stream: projections on a bundle's directions, made comparable.

A token's raw readout at chosen layer L for emotion e is the projection of the block-L output (the
steering convention's point) on e's unit direction ``u[L, e]``. Raw projections have an offset and a
spread of their own at every layer, so a score is that projection standardized against a reference
recorded in the bundle at extraction (``ReadoutReference``: the mean and standard deviation of the
projection over every content token of the held-out texts, attention sinks left out), averaged over the
layers the emotion steers::

    score[t, e] = mean over L of (proj[t, L, e] - mean[L, e]) / std[L, e]

so 0 is a typical held-out token and 1 is one standard deviation above it, the same on every prompt.
A bundle made before references were recorded has none: its scores are the raw projection divided by
the layer's typical residual norm (``residual_norm``, a fraction of the stream's length, not centred), or
the raw projection when that is missing too; ``ReadoutScale`` says which, and every result carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emolab.core.bundle import READOUT_KEY, BundleError, EmotionBundle

__all__ = ["READ_AT", "READOUT_KEY", "ReadoutReference", "ReadoutScale", "readout_scale", "readout_summary",
           "score_tokens", "summary_from_sums", "unit_directions"]

# Where a served readout is taken (the response and the docs say it): at each chosen layer, the residual stream
# as this request's forward found it, before this request's own addition, ablation or clamp at that layer.
READ_AT = ("before this request's own steering at each chosen layer (what it steers at earlier layers has "
           "propagated into the stream; an unsteered request's readout is untouched)")



@dataclass(frozen=True)
class ReadoutReference:
    """Per chosen layer and emotion: the mean and standard deviation of the projection over reference tokens."""

    layers: list[int]
    mean: np.ndarray  # [n_layers, n_emotions]
    std: np.ndarray  # [n_layers, n_emotions]
    tokens: int  # how many tokens the statistics were taken over
    source: str  # what they were (e.g. "held-out GoEmotions texts, every content token")

    def to_metadata(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "mean": np.round(self.mean, 6).tolist(),
                "std": np.round(self.std, 6).tolist(), "tokens": int(self.tokens), "source": self.source}

    @classmethod
    def from_metadata(cls, value: Any, bundle: EmotionBundle) -> ReadoutReference:
        if not isinstance(value, dict):
            raise BundleError(f"metadata {READOUT_KEY} must be an object")
        try:
            mean = np.asarray(value["mean"], dtype=np.float64)
            std = np.asarray(value["std"], dtype=np.float64)
            layers = [int(x) for x in value["layers"]]
            tokens, source = int(value["tokens"]), str(value.get("source", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"metadata {READOUT_KEY} is malformed ({exc})") from None
        shape = (len(bundle.chosen_layers), len(bundle.emotions))
        if layers != list(bundle.chosen_layers) or mean.shape != shape or std.shape != shape:
            raise BundleError(f"metadata {READOUT_KEY} does not fit the bundle's {shape[0]} chosen layers x "
                              f"{shape[1]} emotions")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std >= 0)):
            raise BundleError(f"metadata {READOUT_KEY} holds non-finite or negative values")
        return cls(layers, mean, std, tokens, source)


@dataclass(frozen=True)
class ReadoutScale:
    """How a bundle's readout is scaled: the reference's statistics, else a fallback, and what scores mean."""

    kind: str  # "standardized" | "residual_norm" | "raw"
    center: np.ndarray  # [n_layers, n_emotions]
    spread: np.ndarray  # [n_layers, n_emotions], > 0
    meaning: str

    def to_json(self) -> dict[str, str]:
        return {"scale": self.kind, "meaning": self.meaning}


def unit_directions(bundle: EmotionBundle) -> np.ndarray:
    """``[n_layers, n_emotions, hidden]`` float32: each emotion's direction at each chosen layer, unit length;
    zero where the emotion does not steer that layer (its readout there is left out of its score)."""
    basis = bundle.basis().astype(np.float64) * bundle.steering_mask()[:, :, None]
    lengths = np.linalg.norm(basis, axis=2, keepdims=True)
    return (basis / np.where(lengths == 0, 1.0, lengths)).astype(np.float32)


def readout_scale(bundle: EmotionBundle) -> ReadoutScale:
    """The bundle's reference when it has one; otherwise the stated fallback."""
    shape = (len(bundle.chosen_layers), len(bundle.emotions))
    if READOUT_KEY in bundle.metadata:
        ref = ReadoutReference.from_metadata(bundle.metadata[READOUT_KEY], bundle)
        return ReadoutScale("standardized", ref.mean, np.maximum(ref.std, 1e-12),
                            f"standard deviations from the mean projection of {ref.source} ({ref.tokens} tokens)")
    try:
        norms = np.asarray(bundle.residual_norms(), dtype=np.float64)  # one per chosen layer
        spread = np.repeat(norms[:, None], shape[1], axis=1)
        return ReadoutScale("residual_norm", np.zeros(shape), np.maximum(spread, 1e-12),
                            "projection as a fraction of the layer's typical residual-stream norm, not centred "
                            "(this bundle records no readout reference; re-extract for standardized scores)")
    except BundleError:
        return ReadoutScale("raw", np.zeros(shape), np.ones(shape),
                            "raw projection on the unit direction, not centred or scaled (this bundle records "
                            "neither a readout reference nor residual norms)")


def score_tokens(projections: np.ndarray, scale: ReadoutScale, mask: np.ndarray) -> np.ndarray:
    """``[T, n_layers, n_emotions]`` projections -> ``[T, n_emotions]`` scores, averaged over each emotion's own
    layers (``mask``, ``[n_layers, n_emotions]`` bool: ``EmotionBundle.steering_mask``)."""
    z = (np.asarray(projections, dtype=np.float64) - scale.center) / scale.spread
    weights = mask.astype(np.float64)
    return (z * weights).sum(axis=1) / np.maximum(weights.sum(axis=0), 1.0)


def readout_summary(emotions: list[str], scale: ReadoutScale, mask: np.ndarray, *, prompt: np.ndarray,
                    generated: np.ndarray, per_token: bool = False) -> dict:
    """A served request's readout from its positions' projections (``[positions, n_layers, n_emotions]``):
    ``prompt``, the prompt's tokens after the first (an attention sink in every model here), and ``generated``,
    the generated tokens fed back into the model (all but the last, which no forward reads). Each emotion's
    mean score over each, ``null`` where there is no token; with ``per_token`` the generated tokens' scores."""
    prompt, generated = np.asarray(prompt, np.float64), np.asarray(generated, np.float64)
    return summary_from_sums(emotions, scale, mask, prompt_sum=prompt.sum(axis=0), prompt_count=len(prompt),
                             generated_sum=generated.sum(axis=0), generated_count=len(generated),
                             per_token=generated if per_token else None)


def summary_from_sums(emotions: list[str], scale: ReadoutScale, mask: np.ndarray, *, prompt_sum: np.ndarray,
                      prompt_count: int, generated_sum: np.ndarray, generated_count: int,
                      per_token: np.ndarray | None = None) -> dict:
    """``readout_summary`` from per-layer sums of projections (``[n_layers, n_emotions]``) and token counts, as a
    batched engine accumulates them (a score is affine in the projection, so the mean score is the score of
    the mean projection); ``per_token``: the generated tokens' projections ``[k, n_layers, n_emotions]``."""

    def means(total: np.ndarray, count: int) -> dict[str, float | None]:
        if count == 0:
            return {e: None for e in emotions}
        mean = score_tokens(np.asarray(total, np.float64)[None] / count, scale, mask)[0]
        return {e: round(float(v), 6) for e, v in zip(emotions, mean, strict=True)}

    summary = {"emotions": list(emotions), "prompt": means(prompt_sum, prompt_count),
               "generated": means(generated_sum, generated_count),
               "tokens": {"prompt": int(prompt_count), "generated": int(generated_count)},
               "scale": scale.kind, "meaning": scale.meaning, "read_at": READ_AT}
    if per_token is not None:
        scores = score_tokens(per_token, scale, mask) if len(per_token) else np.zeros((0, len(emotions)))
        summary["generated_tokens"] = np.round(scores, 6).tolist()
    return summary
