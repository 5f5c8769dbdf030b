"""BatchSteering without vLLM: layers returning (hidden_states, residual) like vLLM's decoder blocks.

Exact checks: patched residual == original residual + rows[token] @ basis, padding and unsteered
tokens get exactly zero, rows are shared and freed, bookkeeping survives requests leaving.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolab.core.bundle import EmotionBundle
from emolab.core.steering import SteeringLimits
from emolab.fastpath.batch import BatchSteering

EMOTIONS = ["anger", "joy", "sadness"]
HIDDEN = 8


class Block(torch.nn.Module):
    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor):
        return hidden_states * 2, residual + 1


def make(max_tokens: int = 16, max_rows: int = 4):
    rng = np.random.default_rng(0)
    vectors = {e: rng.standard_normal((2, HIDDEN)).astype(np.float32) for e in EMOTIONS}
    bundle = EmotionBundle(EMOTIONS, [3, 4], vectors, {"num_layers": 6})
    blocks = [Block(), Block()]
    steering = BatchSteering(blocks, bundle, bundle.basis(), max_tokens=max_tokens, max_rows=max_rows,
                             device=torch.device("cpu"), dtype=torch.float32, layouts=["pair", "pair"],
                             limits=SteeringLimits())
    return steering, blocks, bundle


def run(block: Block, n: int):
    hidden, residual = torch.randn(n, HIDDEN), torch.randn(n, HIDDEN)
    plain = Block()(hidden, residual)
    return plain, block(hidden, residual)


def test_layout_adds_each_requests_vector_to_its_tokens_only():
    steering, blocks, bundle = make()
    steering.update([("a", {"steering": [1, 2.0]}), ("b", None), ("c", {"steering": ["anger", 1.0, "sadness", -0.5]})], [])
    steering.set_layout(["b", "a", "c"], np.array([3, 1, 2]))  # batch order is not arrival order
    basis = bundle.basis()
    for index, block in enumerate(blocks):
        (h0, r0), (h1, r1) = run(block, 8)  # 6 real tokens + 2 padding
        assert torch.equal(h1, h0)
        expected = r0.clone()
        expected[3] += torch.from_numpy(2.0 * basis[index, 1])
        expected[4:6] += torch.from_numpy(1.0 * basis[index, 0] - 0.5 * basis[index, 2])
        assert torch.allclose(r1, expected, atol=1e-6)
        assert torch.equal(r1[:3], r0[:3]) and torch.equal(r1[6:], r0[6:])  # unsteered and padding: exact


def test_unsteered_batches_do_not_touch_buffers_and_stale_rows_are_cleared():
    steering, blocks, _ = make()
    steering.set_layout(["x", "y"], np.array([4, 4]))
    assert not steering.token_rows.any()
    steering.update([("s", {"steering": [0, 1.0]})], [])
    steering.set_layout(["s"], np.array([10]))
    assert steering.token_rows[:10].tolist() == [1] * 10
    steering.update([], ["s"])
    steering.set_layout(["x"], np.array([2]))  # the steered request left: everything back to row 0
    assert not steering.token_rows.any()
    (h0, r0), (h1, r1) = run(blocks[0], 12)
    assert torch.equal(r1, r0)


def test_identical_steerings_share_a_row_and_rows_are_recycled():
    steering, _, _ = make(max_rows=2)
    steering.update([("a", {"steering": [1, 1.5]}), ("b", {"steering": ["joy", 1.0, 1, 0.5]})], [])
    assert steering.active_requests == 2 and len(steering._free_rows) == 1  # one row for both
    steering.update([("c", {"steering": [2, 1.0]})], [])
    steering.update([("d", {"steering": [0, 1.0]})], [])  # no row left: logged, runs unsteered
    assert steering.active_requests == 3
    steering.update([], ["a", "b", "c"])
    assert steering.active_requests == 0 and len(steering._free_rows) == 2
    assert not steering._row_of_key and not steering._key_of_row


def test_re_added_request_replaces_its_old_steering():
    steering, _, _ = make()
    steering.update([("a", {"steering": [1, 1.0]})], [])
    steering.update([("a", {"steering": [2, 1.0]})], [])  # re-sent after preemption (V2 does this)
    steering.set_layout(["a"], np.array([1]))
    row = int(steering.token_rows[0])
    assert steering.add[row].tolist() == [0.0, 0.0, 1.0]
    assert steering.active_requests == 1


def test_invalid_steering_in_the_engine_runs_unsteered(caplog):
    steering, _, _ = make()
    steering.update([("bad", {"steering": [9, 1.0]})], [])
    assert steering.active_requests == 0
    assert "invalid steering" in caplog.text


def test_batch_larger_than_buffer_is_refused():
    steering, _, _ = make(max_tokens=4)
    steering.update([("a", {"steering": [1, 1.0]})], [])
    with pytest.raises(RuntimeError, match="exceeds the steering buffer"):
        steering.set_layout(["a"], np.array([5]))


class TensorBlock(torch.nn.Module):  # Granite / OLMo 2 in vLLM: the whole output as one tensor
    def forward(self, hidden_states: torch.Tensor):
        return hidden_states * 2


class LeadingBlock(torch.nn.Module):  # MiniCPM in vLLM: (output, None); transformers 4 blocks: (output, ...)
    def forward(self, hidden_states: torch.Tensor):
        return hidden_states * 2, None


@pytest.mark.parametrize(("block", "layout", "shape"), [
    (TensorBlock, "tensor", (8, HIDDEN)),
    (TensorBlock, "tensor", (1, 8, HIDDEN)),  # transformers' own blocks keep a batch dimension of 1
    (LeadingBlock, "first", (8, HIDDEN)),
])
def test_other_layouts_add_to_the_block_output(block, layout, shape):
    rng = np.random.default_rng(1)
    vectors = {e: rng.standard_normal((1, HIDDEN)).astype(np.float32) for e in EMOTIONS}
    bundle = EmotionBundle(EMOTIONS, [0], vectors, {"num_layers": 1})
    steered = block()
    steering = BatchSteering([steered], bundle, bundle.basis(), max_tokens=16, max_rows=4, device=torch.device("cpu"),
                             dtype=torch.float32, layouts=[layout])
    steering.update([("a", {"steering": [1, 2.0]}), ("b", None)], [])
    steering.set_layout(["b", "a"], np.array([5, 2]))
    hidden = torch.randn(shape)
    plain, out = block()(hidden), steered(hidden)
    if layout == "first":
        assert out[1] is None
        plain, out = plain[0], out[0]
    expected = plain.clone()
    expected[..., 5:7, :] += torch.from_numpy(2.0 * bundle.basis()[0, 1])
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(out[..., :5, :], plain[..., :5, :]) and torch.equal(out[..., 7:, :], plain[..., 7:, :])


def test_an_unknown_layout_is_refused():
    bundle = EmotionBundle(EMOTIONS, [0], {e: np.ones((1, HIDDEN), np.float32) for e in EMOTIONS}, {"num_layers": 1})
    with pytest.raises(ValueError, match="unknown block layout"):
        BatchSteering([TensorBlock()], bundle, bundle.basis(), max_tokens=4, max_rows=2, device=torch.device("cpu"),
                      dtype=torch.float32, layouts=["sum"])
