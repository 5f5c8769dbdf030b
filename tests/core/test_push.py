"""``core.push``: the addition at a block's output is exact, reaches later blocks, and leaves no hook behind."""

from __future__ import annotations

import torch

from emolab.core.models import decoder_layers
from emolab.core.push import push


def _block_inputs(model, ids: list[int]) -> list[torch.Tensor]:
    """What each decoder block receives (block L + 1 receives block L's output, push included)."""
    seen: list[torch.Tensor] = []
    handles = [block.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0] if args else
                                                                                     kwargs["hidden_states"]),
                                               with_kwargs=True) for block in decoder_layers(model)]
    try:
        with torch.inference_mode():
            model(input_ids=torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    return [s[0].clone() for s in seen]


def test_push_adds_exactly_the_vector_at_its_block(tiny):
    model, tokenizer = tiny
    ids = tokenizer("the push is an addition", add_special_tokens=False)["input_ids"]
    plain = _block_inputs(model, ids)
    vectors = torch.randn(2, model.config.hidden_size)
    with push(model, [0, 2], vectors):
        pushed = _block_inputs(model, ids)
    assert torch.equal(pushed[0], plain[0])  # the embeddings come before any push
    assert torch.equal(pushed[1], plain[1] + vectors[0])  # block 0's output, plus exactly the push
    assert not torch.allclose(pushed[3], plain[3] + vectors[1])  # block 2 also sees block 1's changed input
    after = _block_inputs(model, ids)
    assert all(torch.equal(a, b) for a, b in zip(after, plain, strict=True))  # the hooks are gone afterwards
