"""The independent judge: MiniLM embeddings as sentence-transformers defines them, and the classifier."""

from __future__ import annotations

import numpy as np
import pytest

from emolab.core.emotions import DEFAULT_EMOTIONS
from emolab.evaluate.judge import (
    EmotionJudge,
    JudgeConfig,
    SentenceEncoder,
    ekman_split,
    load_or_train_judge,
    minilm_dir,
)
from emolab.extraction.data import ekman_targets, load_records

# Small enough for CI on two cores; the committed full run uses the defaults (500 / 200 per class).
SMALL = JudgeConfig(max_train_per_class=60, max_test_per_class=20)


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


@pytest.fixture(scope="module")
def small_judge(tmp_path_factory) -> EmotionJudge:
    return load_or_train_judge(SMALL, cache=tmp_path_factory.mktemp("judge"))


def test_minilm_ships_with_its_pooling_config():
    import json

    folder = minilm_dir()
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True and pooling["word_embedding_dimension"] == 384


def test_embeddings_are_unit_length_and_do_not_depend_on_batching(encoder):
    texts = ["ok", "The meeting moved to Thursday afternoon, see you then.", "Wow!!"]
    together = encoder.encode(texts)
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    assert together.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(together, alone, atol=1e-5)  # padding never leaks into the mean


def test_embedding_is_the_masked_mean_of_token_states(encoder):
    import torch

    text = "I did not expect that at all."
    batch = encoder.tokenizer([text], return_tensors="pt")
    with torch.inference_mode():
        states = encoder.model(**batch).last_hidden_state[0]
    mean = states.mean(dim=0)
    np.testing.assert_allclose(encoder.encode([text])[0], (mean / mean.norm()).numpy(), atol=1e-6)


def test_ekman_split_is_balanced_single_label_and_seeded():
    texts, labels = ekman_split("test", list(DEFAULT_EMOTIONS), per_class=20, seed=3)
    assert np.bincount(labels).tolist() == [20] * 6
    again, _ = ekman_split("test", list(DEFAULT_EMOTIONS), per_class=20, seed=3)
    assert texts == again
    records = {r.text: r for r in load_records("bundled", ("test",))[0]}
    for text, label in zip(texts, labels, strict=True):
        assert ekman_targets(records[text], list(DEFAULT_EMOTIONS)) == {DEFAULT_EMOTIONS[label]}


def test_probabilities_match_sklearn_multinomial_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8))
    y = np.arange(120) % 6
    clf = LogisticRegression(max_iter=2000).fit(x, y)
    judge = EmotionJudge(list(DEFAULT_EMOTIONS), clf.coef_, clf.intercept_, {}, {})
    np.testing.assert_allclose(judge.proba_from_embeddings(x), clf.predict_proba(x), rtol=1e-10, atol=1e-12)


def test_small_judge_reports_test_auc_and_reads_plain_emotion(small_judge, tmp_path):
    auc = small_judge.test_auc
    assert set(auc) == {*DEFAULT_EMOTIONS, "macro"}
    assert 0.6 < auc["macro"] <= 1.0  # far above chance even from 60 texts per class
    assert small_judge.info["n_train"] == 360 and small_judge.info["n_test"] == 120
    proba = small_judge.predict_proba(["Thank you so much, I love it, this is wonderful!", "I am so angry at you."])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert DEFAULT_EMOTIONS[int(proba[0].argmax())] == "joy"
    # The cache round-trips to the same numbers.
    path = small_judge.save(tmp_path / "j.json")
    again = EmotionJudge.load(path, encoder=small_judge.encoder)
    np.testing.assert_allclose(again.predict_proba(["I am so angry at you."]), proba[1:], atol=1e-6)
    assert again.test_auc == auc
