"""Layer ranking by detection: one-vs-rest logistic probes scored by validation ROC-AUC."""

from __future__ import annotations

import numpy as np

__all__ = ["probe_auc"]


def probe_auc(
    train_acts: np.ndarray, train_labels: np.ndarray, val_acts: np.ndarray, val_labels: np.ndarray, n_emotions: int,
    seed: int = 42,
) -> np.ndarray:
    """Validation ROC-AUC ``[n_layers, n_emotions]`` of one-vs-rest logistic probes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    auc = np.empty((train_acts.shape[1], n_emotions), dtype=np.float64)
    for layer in range(train_acts.shape[1]):
        for e in range(n_emotions):
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed))
            probe.fit(train_acts[:, layer], train_labels == e)
            scores = probe.decision_function(val_acts[:, layer])
            auc[layer, e] = roc_auc_score(val_labels == e, scores)
    return auc
