"""Vector methods: how activations of labelled texts become one steering vector per emotion and layer.

Each method is a pure function of numpy arrays, so it is unit-tested on hand-computed inputs.
"""

from __future__ import annotations

import numpy as np

from emolab.extraction.errors import ExtractError

__all__ = ["contrastive_vectors"]


def contrastive_vectors(acts: np.ndarray, labels: np.ndarray, n_emotions: int) -> np.ndarray:
    """``[n_emotions, n_layers, hidden]``: mean of each class minus the mean of all other rows."""
    vectors = np.empty((n_emotions, *acts.shape[1:]), dtype=np.float32)
    for e in range(n_emotions):
        mine = labels == e
        if not mine.any() or mine.all():
            raise ExtractError(f"class {e} has no examples on one side of the contrast")
        vectors[e] = acts[mine].mean(axis=0, dtype=np.float64) - acts[~mine].mean(axis=0, dtype=np.float64)
    return vectors
