"""Vector methods: how pooled activations become one steering vector per emotion and layer.

Every function is pure numpy (activations in, vectors out), so each is unit-tested on hand-computed
inputs. Shapes:

* ``acts``     ``[n_texts, n_layers, hidden]``: one pooled residual-stream row per text and layer
  (which positions were pooled, ``last`` or ``mean``, is decided at capture time);
* ``vectors``  ``[n_emotions, n_layers, hidden]``: one direction per emotion and layer.

Methods (``METHODS``):

* ``meandiff``: labelled texts (GoEmotions); ``v[e] = mean(rows of e) - mean(all other rows)``.
* ``contrastive``: contrastive prompts (CAA / repeng style): the same user turn and the same answer
  tokens under an emotion instruction and under the parallel neutral instruction; the vector is the
  mean paired difference (``mean_difference``) or its first principal axis (``principal_direction``).

* ``learned``: a mean-difference start moved by gradient descent on what the push does to replies
  (``emolab.extraction.learned``).

Post-processing, for any method: ``contrast_against_others`` (emotion vs the other emotions rather
than vs neutral) and ``remove_shared_direction`` (project off the direction all emotions share).
``normalize_to_residual`` puts vectors on the normalized alpha scale, as a bundle's
``steering_basis("normalized")`` does.
"""

from __future__ import annotations

import numpy as np

from emolab.core.bundle import NORMALIZED_FRACTION
from emolab.extraction.errors import ExtractError

__all__ = [
    "METHODS", "POSITIONS", "contrast_against_others", "mean_difference", "meandiff_vectors",
    "normalize_to_residual", "paired_differences", "principal_direction", "remove_shared_direction",
]

METHODS = ("meandiff", "contrastive", "learned")
POSITIONS = ("last", "mean")


def meandiff_vectors(acts: np.ndarray, labels: np.ndarray, n_emotions: int) -> np.ndarray:
    """``[n_emotions, n_layers, hidden]``: mean of each class minus the mean of all other rows."""
    vectors = np.empty((n_emotions, *acts.shape[1:]), dtype=np.float32)
    for e in range(n_emotions):
        mine = labels == e
        if not mine.any() or mine.all():
            raise ExtractError(f"class {e} has no examples on one side of the contrast")
        vectors[e] = acts[mine].mean(axis=0, dtype=np.float64) - acts[~mine].mean(axis=0, dtype=np.float64)
    return vectors


def paired_differences(emotional: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """Row-wise ``emotional - neutral`` of matched pairs (same user turn, same answer tokens)."""
    if emotional.shape != neutral.shape:
        raise ExtractError(f"paired activations must have one shape, got {emotional.shape} and {neutral.shape}")
    if len(emotional) == 0:
        raise ExtractError("no pairs to contrast")
    return (emotional.astype(np.float64) - neutral.astype(np.float64)).astype(np.float32)


def mean_difference(differences: np.ndarray) -> np.ndarray:
    """CAA's vector: the mean of the paired differences ``[n_pairs, n_layers, hidden]`` -> ``[n_layers, hidden]``."""
    return differences.mean(axis=0, dtype=np.float64).astype(np.float32)


def principal_direction(differences: np.ndarray) -> np.ndarray:
    """Per layer, the first principal axis of the (uncentered) paired differences, ``[n_layers, hidden]``.

    As repeng's ``pca_diff``: the top right-singular vector of the raw differences, the direction
    of largest mean square. An axis has no sign or length of its own, so it is oriented to agree
    with the mean difference and given the length of the mean difference's projection on it; a
    positive alpha then pushes towards the emotional side, about as far as the mean difference would.
    """
    diffs = differences.astype(np.float64)
    mean = diffs.mean(axis=0)
    out = np.empty(diffs.shape[1:], dtype=np.float32)
    for layer in range(diffs.shape[1]):
        _, _, vt = np.linalg.svd(diffs[:, layer], full_matrices=False)
        axis = vt[0]
        out[layer] = axis * float(axis @ mean[layer])  # the sign flips with the projection
    return out


def contrast_against_others(vectors: np.ndarray) -> np.ndarray:
    """``v[e] - mean(v[other emotions])``: emotion-vs-neutral vectors become emotion-vs-rest.

    When every ``v[e]`` is an emotion minus the same neutral side, the neutral side cancels: what is
    left is one emotion's states against the other emotions' states.
    """
    n = vectors.shape[0]
    if n < 2:
        raise ExtractError("contrasting against the other emotions needs at least two emotions")
    total = vectors.sum(axis=0, dtype=np.float64)
    return (vectors - (total - vectors) / (n - 1)).astype(np.float32)


def remove_shared_direction(vectors: np.ndarray, tolerance: float = 1e-4) -> np.ndarray:
    """Project each ``v[e, L]`` off the mean of the emotions' vectors at layer L.

    The mean is what every emotion has in common (for emotion-vs-neutral vectors: "emotional rather
    than neutral"); removing it keeps what tells the emotions apart. A layer whose mean is below
    ``tolerance`` x the vectors' mean length has no shared direction (it would only be rounding
    noise) and is left as it is: mean-difference vectors of balanced classes always sum to zero.
    """
    vectors64 = vectors.astype(np.float64)
    shared = vectors64.mean(axis=0)  # [n_layers, hidden]
    length = np.linalg.norm(shared, axis=-1, keepdims=True)
    scale = np.linalg.norm(vectors64, axis=-1).mean(axis=0)[:, None]
    real = length > tolerance * scale
    unit = np.divide(shared, length, out=np.zeros_like(shared), where=real)
    coeff = np.einsum("elh,lh->el", vectors64, unit)
    return (vectors64 - coeff[..., None] * unit[None]).astype(np.float32)


def normalize_to_residual(vectors: np.ndarray, residual_norm: np.ndarray,
                          fraction: float = NORMALIZED_FRACTION) -> np.ndarray:
    """Rescale every ``v[..., L, :]`` to length ``fraction * residual_norm[L]`` (the normalized alpha scale).

    ``vectors`` is ``[..., n_layers, hidden]``; zero vectors stay zero (nothing to point along).
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    lengths = np.linalg.norm(vectors, axis=-1, keepdims=True)
    target = fraction * np.asarray(residual_norm, dtype=np.float64)[:, None]
    scaled = np.divide(vectors, lengths, out=np.zeros_like(vectors), where=lengths > 0) * target
    return scaled.astype(np.float32)
