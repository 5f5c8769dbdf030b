"""``RowBatch`` on a tiny random Qwen3 (fp32): a row alone is ``model.generate`` bit for bit; rows that join,
leave and carry their own steering get what they get alone (to fp32 rounding); the cache is trimmed to the
longest row; and a model that cannot be batched is told apart (the HF backend then serves it one at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolab.core.bundle import EmotionBundle
from emolab.serve.hf_backend import HFBackend
from emolab.steer.hf import HFSteerer
from emolab.steer.rows import RowBatch, batching_problem

ROUNDING = 1e-4  # fp32 logits of a row beside others vs alone (matrix shapes and the padding mask differ)
PROMPTS = [[5, 17, 99, 3, 41, 8, 250], [77, 12], [9, 300, 4, 4, 61], [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000,
                                                                    9000, 10000, 11000]]


@pytest.fixture(scope="module")
def steerer(tiny):
    model, _ = tiny
    rng = np.random.default_rng(0)
    vectors = {e: rng.normal(size=(2, 128)).astype(np.float32) for e in ("joy", "fear")}
    bundle = EmotionBundle(emotions=["joy", "fear"], chosen_layers=[1, 2], vectors=vectors, metadata={"num_layers": 4})
    return HFSteerer(model, bundle)


def alone(model, steerer, prompt: list[int], coeffs, feed: list[int]) -> list[torch.Tensor]:
    """Logits of one row in a batch of its own: after its prompt, then after each token of ``feed``."""
    batch = RowBatch(model, steerer, pad_id=0)
    with torch.inference_mode():
        out = [batch.prefill([prompt], [coeffs])[0]]
        out += [batch.step(torch.tensor([t]))[0] for t in feed]
    return out


def test_a_row_alone_is_model_generate_bit_for_bit(tiny, steerer):
    model, _ = tiny
    prompt, coeffs = PROMPTS[0], np.array([1.5, -0.5], dtype=np.float32)
    with torch.inference_mode(), steerer.steer(coeffs):
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None,
                             output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt):].tolist()
    ours = alone(model, steerer, prompt, coeffs, tokens[:-1])
    assert [int(x.argmax()) for x in ours] == tokens
    for theirs, mine in zip(out.logits, ours, strict=True):
        assert torch.equal(theirs[0].float(), mine)


def test_rows_join_and_leave_with_their_own_steering(tiny, steerer):
    model, _ = tiny
    coeffs = [np.array([2.0, 0.0], np.float32), None, np.array([-1.0, 1.0], np.float32), np.zeros(2, np.float32)]
    feeds = [[11, 12, 13, 14, 15, 16], [21, 22, 23, 24, 25, 26], [31, 32, 33], [41, 42, 43]]
    solo = [alone(model, steerer, p, c, f) for p, c, f in zip(PROMPTS, coeffs, feeds, strict=True)]
    batch = RowBatch(model, steerer, pad_id=0)
    got: list[list[torch.Tensor]] = [[] for _ in PROMPTS]
    with torch.inference_mode():
        for row, logits in zip((0, 1), batch.prefill(PROMPTS[:2], coeffs[:2]), strict=True):  # two rows start
            got[row].append(logits)
        for k in range(2):
            for row, logits in zip((0, 1), batch.step(torch.tensor([feeds[0][k], feeds[1][k]])), strict=True):
                got[row].append(logits)
        for row, logits in zip((2, 3), batch.prefill(PROMPTS[2:], coeffs[2:]), strict=True):  # two join
            got[row].append(logits)
        assert batch.width == len(PROMPTS[3]) and len(batch) == 4  # the longest joiner sets the width
        for k in range(3):
            tokens = torch.tensor([feeds[0][2 + k], feeds[1][2 + k], feeds[2][k], feeds[3][k]])
            for row, logits in enumerate(batch.step(tokens)):
                got[row].append(logits)
        batch.keep([0, 1])  # the two joiners leave: the columns only they used go
        assert batch.width == len(PROMPTS[0]) + 5 and batch.slots() == 2 * batch.width
        for row, logits in zip((0, 1), batch.step(torch.tensor([feeds[0][5], feeds[1][5]])), strict=True):
            got[row].append(logits)
        batch.keep([1])
        assert batch.width == len(PROMPTS[1]) + 6 and batch.slots() == batch.width
    for want, have in zip(solo, got, strict=True):
        assert len(want) == len(have)
        gap = max(float((a - b).abs().max()) for a, b in zip(want, have, strict=True))
        assert gap <= ROUNDING, gap
    assert not torch.allclose(solo[0][0], alone(model, steerer, PROMPTS[0], None, [])[0])  # the steering mattered


class _IgnoresPositions(torch.nn.Module):
    """A causal LM wrapper that drops ``position_ids``: its rows get positions from the cache length instead."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.generation_config = inner.generation_config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                          use_cache=use_cache, logits_to_keep=logits_to_keep)


def test_a_model_that_cannot_be_batched_is_served_one_request_at_a_time(tiny, steerer):
    model, tokenizer = tiny
    assert batching_problem(model, pad_id=0) is None
    broken = _IgnoresPositions(model)
    problem = batching_problem(broken, pad_id=0)
    assert problem and "positions" in problem
    config = model.generation_config
    config.no_repeat_ngram_size = 3  # a processor only model.generate applies
    try:
        backend = HFBackend(model, tokenizer, steerer, max_batch=8)
        assert backend.scheduler is None and backend.max_batch == 1
        assert "no_repeat_ngram_size=3" in backend.batching_note
    finally:
        config.no_repeat_ngram_size = None
    assert HFBackend(model, tokenizer, steerer, max_batch=8).scheduler is not None
