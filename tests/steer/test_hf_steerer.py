"""HFSteerer on a tiny random Llama: patched block output == original + sum_e c_e v_e[L], exactly.

The block outputs are read as the *inputs* of the following blocks (forward pre-hooks): transformers'
own ``output_hidden_states`` records a block's output before other forward hooks have changed it.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from emolab.core.bundle import EmotionBundle
from emolab.core.models import decoder_layers
from emolab.steer.hf import HFSteerer

EMOTIONS = ["anger", "joy", "sadness"]


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def block_inputs(model: LlamaForCausalLM, ids: torch.Tensor) -> list[torch.Tensor]:
    """What each decoder block received: block i's input is block i-1's (possibly steered) output."""
    seen: list[torch.Tensor] = []
    handles = [layer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]),
                                               with_kwargs=True) for layer in model.model.layers]
    try:
        with torch.inference_mode():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def bundle(layers: list[int]) -> EmotionBundle:
    rng = np.random.default_rng(1)
    # Powers of two keep every product and sum exact in float32.
    vectors = {e: (2.0 ** rng.integers(-3, 2, size=(len(layers), 32))).astype(np.float32) for e in EMOTIONS}
    return EmotionBundle(EMOTIONS, layers, vectors, {"num_layers": 4})


def test_patched_equals_original_plus_patch_at_the_chosen_layer():
    model, b = tiny_model(), bundle([1])
    steerer = HFSteerer(model, b)
    ids = torch.randint(0, 64, (2, 7))
    coeffs = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    plain = block_inputs(model, ids)
    with steerer.steer(coeffs):
        steered = block_inputs(model, ids)
    patch = torch.from_numpy(0.5 * b.vectors["anger"][0] - 1.0 * b.vectors["joy"][0] + 2.0 * b.vectors["sadness"][0])
    assert torch.equal(steered[1], plain[1])  # output of block 0: untouched
    assert torch.equal(steered[2], plain[2] + patch)  # output of block 1 (= hidden_states[2]), every position
    assert not torch.allclose(steered[3], plain[3])  # and it propagates


def test_per_row_coefficients_and_no_steering():
    model, b = tiny_model(), bundle([2])
    steerer = HFSteerer(model, b)
    ids = torch.randint(0, 64, (2, 5))
    rows = np.array([[0, 0, 0], [1, 0, 0]], dtype=np.float32)
    plain = block_inputs(model, ids)[3]
    with steerer.steer(rows):
        steered = block_inputs(model, ids)[3]
    with steerer.steer(None):
        untouched = block_inputs(model, ids)[3]
    assert torch.equal(steered[0], plain[0])
    assert torch.equal(steered[1], plain[1] + torch.from_numpy(b.vectors["anger"][0]))
    assert torch.equal(untouched, plain)
    assert not decoder_layers(model)[2]._forward_hooks  # hooks are removed on exit
