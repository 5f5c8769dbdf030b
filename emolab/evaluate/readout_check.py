"""Is the readout valid? Two checks, each with 95% bootstrap intervals, run in-process on a transformers model.

1. **Ranking held-out texts.** Every held-out GoEmotions text of the bundle's own split is read (its score
   per emotion: the mean over its content tokens, and the score at its last token); for each emotion the
   ROC-AUC of that score, one emotion against the rest, is set beside the bundle's probe AUC at the same
   layers (the logistic probe that chose them reads the whole last-token state; the readout reads one
   direction, so it can be lower, never a fairer test). Intervals resample texts.
2. **Read back, unsteered.** For held-out prompts the model replies unsteered, steered with +alpha and with
   -alpha for each emotion (greedy); each reply is then read with no steering at all (the prompt and the
   reply as a chat), and its mean score for the steered emotion over the reply is compared with the
   unsteered reply's, prompt by prompt. This is what the text carries, not the push; intervals resample
   prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from emolab.core.bundle import EmotionBundle
from emolab.core.models import chat_prompt_ids, pad_token_id
from emolab.core.readout import readout_scale, score_tokens, unit_directions
from emolab.evaluate.metrics import bootstrap_ci
from emolab.extraction.data import rebuild_split
from emolab.extraction.projections import token_projections
from emolab.steer import HFSteerer, generate

__all__ = ["readback_effect", "readout_auc", "text_scores"]


def text_scores(model: Any, tokenizer: Any, bundle: EmotionBundle, sequences: Sequence[Sequence[int]],
                spans: Sequence[tuple[int, int]] | None = None, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, last)``: per sequence and emotion, the mean score over the span's non-sink tokens (default:
    all of them) and the score at the span's last token; ``[n, n_emotions]`` each."""
    projections, sinks = token_projections(model, [list(s) for s in sequences], list(bundle.chosen_layers),
                                           unit_directions(bundle), pad_id=pad_token_id(tokenizer),
                                           batch_size=batch_size)
    scale, mask = readout_scale(bundle), bundle.steering_mask()
    means, lasts = [], []
    for i, (proj, sink) in enumerate(zip(projections, sinks, strict=True)):
        lo, hi = spans[i] if spans else (0, len(proj))
        scores = score_tokens(proj[lo:hi], scale, mask)
        keep = ~sink[lo:hi].any(axis=1)
        means.append(scores[keep].mean(axis=0) if keep.any() else scores.mean(axis=0))
        lasts.append(scores[-1])
    return np.asarray(means), np.asarray(lasts)


def _auc_ci(labels: np.ndarray, scores: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    value = float(roc_auc_score(labels, scores))
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        if labels[idx].min() != labels[idx].max():
            draws.append(roc_auc_score(labels[idx], scores[idx]))
    lo, hi = np.percentile(draws, [2.5, 97.5]) if draws else (np.nan, np.nan)
    return value, float(lo), float(hi)


def readout_auc(model: Any, tokenizer: Any, bundle: EmotionBundle, *, data: str | None = None, batch_size: int = 16,
                n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Check 1: one row per emotion, the readout's AUC on the held-out texts (mean-pooled and last token, with
    intervals) beside the probe AUC at the emotion's layers."""
    dataset = rebuild_split(bundle.metadata, data)
    max_length = int(bundle.metadata.get("max_length", 128))
    sequences = tokenizer(dataset.val_texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    means, lasts = text_scores(model, tokenizer, bundle, sequences, batch_size=batch_size)
    auc = np.asarray(bundle.metadata.get("auc_matrix") or [], dtype=np.float64)
    rows = []
    for e, emotion in enumerate(bundle.emotions):
        labels = (dataset.val_labels == dataset.emotions.index(emotion)).astype(int)
        layers = bundle.layers_of(emotion)
        probe = (float(np.mean([auc[bundle.search_layers.index(layer), e] for layer in layers]))
                 if auc.size else float("nan"))
        mean_auc, mean_lo, mean_hi = _auc_ci(labels, means[:, e], n_boot, seed + e)
        last_auc, last_lo, last_hi = _auc_ci(labels, lasts[:, e], n_boot, seed + 100 + e)
        rows.append({"emotion": emotion, "texts": len(labels), "positives": int(labels.sum()),
                     "readout_auc_mean": mean_auc, "mean_ci_low": mean_lo, "mean_ci_high": mean_hi,
                     "readout_auc_last": last_auc, "last_ci_low": last_lo, "last_ci_high": last_hi,
                     "probe_auc": probe, "layers": f"{min(layers)}-{max(layers)}" if layers else ""})
    return pd.DataFrame(rows)


def readback_effect(model: Any, tokenizer: Any, bundle: EmotionBundle, prompts: Sequence[str],
                    alphas: Mapping[str, float], *, max_new_tokens: int = 40, alpha_scale: str | None = None,
                    batch_size: int = 32, n_boot: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check 2: ``(summary, replies)``. ``summary``: per emotion and sign, the mean shift of that emotion's
    score between the steered and the unsteered reply to the same prompt, read back unsteered, with its
    interval; ``replies``: every reply with its six scores."""
    emotions = list(bundle.emotions)
    steerer = HFSteerer(model, bundle, alpha_scale=alpha_scale)
    conditions: list[tuple[str, float]] = [("none", 0.0)]
    for emotion in emotions:
        conditions += [(emotion, float(alphas[emotion])), (emotion, -float(alphas[emotion]))]
    prompt_ids = [chat_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    rows_ids, coeffs, keys = [], [], []
    for k, ids in enumerate(prompt_ids):
        for emotion, alpha in conditions:
            row = np.zeros(len(emotions), dtype=np.float32)
            if emotion != "none":
                row[emotions.index(emotion)] = alpha
            rows_ids.append(ids)
            coeffs.append(row)
            keys.append((k, emotion, alpha))
    replies = generate(model, tokenizer, rows_ids, steerer=steerer, coeffs=np.asarray(coeffs),
                       max_new_tokens=max_new_tokens, batch_size=batch_size)
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in replies]
    # Read back with no steering: the prompt and the reply as a chat; the score over the reply's message.
    sequences, spans = [], []
    for (k, _, _), text in zip(keys, texts, strict=True):
        messages = [{"role": "user", "content": prompts[k]}, {"role": "assistant", "content": text}]
        full = chat_prompt_ids(tokenizer, messages, add_generation_prompt=False)
        start = len(prompt_ids[k])  # the reply's message begins after the prompt as generation saw it
        sequences.append(full)
        spans.append((min(start, len(full) - 1), len(full)))
    means, _ = text_scores(model, tokenizer, bundle, sequences, spans, batch_size=batch_size)
    table = pd.DataFrame([{"prompt": k, "emotion": e, "alpha": a, "reply": t, **dict(zip(emotions, m, strict=True))}
                          for (k, e, a), t, m in zip(keys, texts, means, strict=True)])
    base = table[table.emotion == "none"].set_index("prompt")
    summary = []
    for emotion in emotions:
        for sign in (1, -1):
            arm = table[(table.emotion == emotion) & (np.sign(table.alpha) == sign)].set_index("prompt")
            shift = (arm[emotion] - base.loc[arm.index, emotion]).to_numpy()
            lo, hi = bootstrap_ci(shift, n_boot=n_boot, seed=seed)
            summary.append({"emotion": emotion, "alpha": float(arm.alpha.iloc[0]), "prompts": len(shift),
                            "shift": float(shift.mean()), "ci_low": lo, "ci_high": hi,
                            "steered_score": float(arm[emotion].mean()), "unsteered_score": float(base[emotion].mean())})
    return pd.DataFrame(summary), table
