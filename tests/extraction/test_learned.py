"""Learned directions on the tiny random Qwen3: the log-probabilities are a hand loop's, the optimizer
lowers the loss it reports, zero steps keep the start, and a whole extraction stores one direction per
emotion at the start vectors' lengths."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from emolab.core.bundle import EmotionBundle
from emolab.extraction import ExtractConfig, ExtractError, LearnSettings, extract
from emolab.extraction.data import group_texts, load_records
from emolab.extraction.learned import answer_logprob, learn_direction, preference_pairs

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "goemotions"
EMOTIONS = ("anger", "joy", "sadness")


def test_answer_logprob_equals_a_hand_loop(tiny):
    model, tokenizer = tiny
    pairs = [([5, 9, 11], [7, 3]), ([5], [8, 8, 2, 4]), ([1, 2, 3, 4, 5], [6])]
    got = answer_logprob(model, pairs, pad_id=0)
    for i, (prompt, answer) in enumerate(pairs):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + answer])).logits[0].double()
        lp = torch.log_softmax(logits, dim=-1)
        want = np.mean([lp[len(prompt) - 1 + k, tok].item() for k, tok in enumerate(answer)])
        assert got[i].item() == pytest.approx(want, abs=1e-5)
    with pytest.raises(ExtractError, match="no tokens"):
        answer_logprob(model, [([1, 2], [])], pad_id=0)


def _pairs(tokenizer, n: int = 6):
    rng = random.Random(0)
    return preference_pairs(tokenizer, ["Describe your room.", "How was the trip?"], ["I hate this so much!!"],
                            ["It is a table.", "Thanks, that is lovely."], n, 8, rng)


def test_preference_pairs_share_the_prompt_and_end_the_turn(tiny):
    model, tokenizer = tiny
    chosen, rejected = _pairs(tokenizer)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert len(chosen) == len(rejected) == 6
    for (p1, a1), (p2, a2) in zip(chosen, rejected, strict=True):
        assert p1 == p2 and a1[-1] == a2[-1] == end
        assert tokenizer.decode(a1[:-1]) == "I hate this so much!!"[:len(tokenizer.decode(a1[:-1]))]
        assert len(a1) <= 9 and len(a2) <= 9  # at most 8 answer tokens, then the end of the turn
    with pytest.raises(ExtractError, match="texts of the emotion"):
        preference_pairs(tokenizer, ["hi"], [], ["x"], 2, 8, random.Random(0))


def test_zero_steps_keep_the_start_and_steps_lower_the_loss(tiny):
    model, tokenizer = tiny
    chosen, rejected = _pairs(tokenizer)
    init = np.random.default_rng(1).normal(size=model.config.hidden_size)
    same, info = learn_direction(model, chosen, rejected, [1], [3.0], init, LearnSettings(steps=0), pad_id=0)
    np.testing.assert_allclose(same, init / np.linalg.norm(init), atol=1e-7)
    assert info["loss_first"] is None and info["cos_to_start"] == pytest.approx(1.0)
    # the whole set as one batch, so every step sees the same loss surface
    settings = LearnSettings(steps=25, pairs=6, batch=6, lr=0.05, alpha=1.0)
    flags = [p.requires_grad for p in model.parameters()]
    unit, info = learn_direction(model, chosen, rejected, [1, 2], [8.0, 8.0], init, settings, pad_id=0, seed=4)
    assert info["loss_last"] < info["loss_first"]
    assert np.linalg.norm(unit) == pytest.approx(1.0, abs=1e-6) and info["cos_to_start"] < 0.9999
    assert [p.requires_grad for p in model.parameters()] == flags  # the model is left as it was
    again, _ = learn_direction(model, chosen, rejected, [1, 2], [8.0, 8.0], init, settings, pad_id=0, seed=4)
    np.testing.assert_array_equal(unit, again)  # seeded: the same batches, the same direction
    with pytest.raises(ExtractError, match="non-zero length"):
        learn_direction(model, chosen, rejected, [1], [1.0], np.zeros_like(init), settings, pad_id=0)


def _config(tmp_path, steps: int, **kwargs) -> ExtractConfig:
    learn = LearnSettings(**{"steps": steps, "split": "train", "pairs": 4, "batch": 2, "layers": "1,2", **kwargs})
    return ExtractConfig(model="tiny", emotions=EMOTIONS, layers="0,1,2", window=2, batch_size=4, data=str(FIXTURE_DIR),
                         test_size=0.4, seed=3, output=str(tmp_path / f"learned-{steps}"), progress=False,
                         method="learned", learn=learn)


def test_a_learned_extraction_stores_one_direction_per_emotion(tiny, tmp_path):
    model, tokenizer = tiny
    start = extract(ExtractConfig(model="tiny", emotions=EMOTIONS, layers="0,1,2", window=2, batch_size=4,
                                  data=str(FIXTURE_DIR), test_size=0.4, seed=3, progress=False), model, tokenizer)
    kept = extract(_config(tmp_path, 0), model=model, tokenizer=tokenizer)
    moved = extract(_config(tmp_path, 3), model=model, tokenizer=tokenizer)
    for emotion in EMOTIONS:
        v0 = start.full_sweep[emotion].astype(np.float64)  # [3 layers, hidden]
        lengths = np.linalg.norm(v0, axis=1)
        units = v0[1:] / lengths[1:, None]  # the window is layers 1-2
        direction = units.sum(axis=0) / np.linalg.norm(units.sum(axis=0))
        np.testing.assert_allclose(kept.full_sweep[emotion], direction[None] * lengths[:, None], atol=1e-5)
        learned = moved.full_sweep[emotion].astype(np.float64)
        np.testing.assert_allclose(np.linalg.norm(learned, axis=1), lengths, rtol=1e-5)
        unit = learned / np.linalg.norm(learned, axis=1, keepdims=True)
        np.testing.assert_allclose(unit, np.repeat(unit[:1], 3, axis=0), atol=1e-6)  # one direction, every layer
    meta = EmotionBundle.load(tmp_path / "learned-3").metadata
    assert (meta["method"], meta["positions"]) == ("learned", "last")
    assert meta["learned"]["window"] == [1, 2] and meta["learned"]["split"] == "train"
    per = meta["learned"]["per_emotion"]
    assert set(per) == set(EMOTIONS) and all(p["loss_first"] is not None and p["n_texts"] > 0 for p in per.values())


def test_answers_come_from_where_the_training_texts_came_from(tiny, tmp_path, monkeypatch, capsys):
    model, tokenizer = tiny
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # "auto" falls back to the bundled copy, and says so
    config = _config(tmp_path, 0, split="dev")
    config.data, config.max_per_class = "auto", 6
    bundle = extract(config, model=model, tokenizer=tokenizer)
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("GoEmotions: using the bundled")]
    assert len(notices) == 1  # the dev split is read from the resolved source, not resolved again
    assert bundle.metadata["data_source"].startswith("bundled:")
    assert all(p["n_texts"] > 0 for p in bundle.metadata["learned"]["per_emotion"].values())


def test_bad_learned_settings_are_refused_before_any_capture(tiny, tmp_path):
    model, tokenizer = tiny
    for kwargs, setting in [({"alpha": 0.0}, "learn_alpha"), ({"batch": 9}, "learn_batch"),
                            ({"pairs": 0}, "learn_pairs")]:
        with pytest.raises(ExtractError) as info:
            extract(_config(tmp_path, 1, **kwargs), model=model, tokenizer=tokenizer)
        assert info.value.setting == setting
    with pytest.raises(ExtractError) as info:
        extract(_config(tmp_path, -1), model=model, tokenizer=tokenizer)
    assert info.value.setting == "learn_steps"
    for kwargs, setting in [({"pca": True}, "pca"), ({"project_out_shared": True}, "project_out_shared")]:
        config = _config(tmp_path, 1)
        for key, value in kwargs.items():
            setattr(config, key, value)
        with pytest.raises(ExtractError) as info:
            extract(config, model=model, tokenizer=tokenizer)
        assert info.value.setting == setting
    outside = _config(tmp_path, 1)
    outside.learn = LearnSettings(steps=1, split="train", pairs=4, batch=2, layers="3")
    with pytest.raises(ExtractError, match="not among the searched layers") as info:
        extract(outside, model=model, tokenizer=tokenizer)
    assert info.value.setting == "learn_layers"


def test_group_texts_keeps_neutral_apart():
    records, _ = load_records(str(FIXTURE_DIR))
    with_neutral, _ = group_texts(records, list(EMOTIONS), neutral=True)
    plain, dropped = group_texts(records, list(EMOTIONS))
    assert {k: v for k, v in with_neutral.items() if k != "neutral"} == plain
    want = [r.text for r in records if r.labels == ("neutral",)]
    assert with_neutral["neutral"] == list(dict.fromkeys(want))
    assert dropped["no_target_emotion"] >= len(want)
