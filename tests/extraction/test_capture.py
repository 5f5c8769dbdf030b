"""Last-token capture equals transformers' own ``hidden_states[L+1]`` on tiny random Llama and Qwen3 models."""

from __future__ import annotations

import pytest
import torch

from emolab.core.models import decoder_layers
from emolab.core.offline import QWEN3_8B_DIR, tiny_qwen3_config
from emolab.extraction.capture import capture_last_token, collect_activations, last_token_index, pooling_weights

TEXTS = [
    "I can't believe they did that to me, I'm furious.",
    "ok",
    "What a lovely surprise, thank you!",
    "My dog died yesterday and the house feels empty.",
    "Hmm?",
]


def _tiny_qwen3():
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(tiny_qwen3_config()).to(torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(QWEN3_8B_DIR)


def _tiny_llama(smollm2_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def model_and_tokenizer(request):
    if request.param == "qwen3":
        return _tiny_qwen3()
    return _tiny_llama(request.getfixturevalue("smollm2_path"))


def test_last_token_index_for_both_padding_sides():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]


@pytest.mark.parametrize("side", ["left", "right"])
def test_capture_equals_hidden_states_at_the_last_real_token(model_and_tokenizer, side):
    model, tokenizer = model_and_tokenizer
    tokenizer.padding_side = side
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    mask = batch["attention_mask"]
    assert not bool(mask.all()), "the texts must need padding for this test to mean anything"
    n_layers = len(decoder_layers(model))
    layers = list(range(n_layers))
    with torch.inference_mode():
        reference = model(**batch, output_hidden_states=True).hidden_states
        with capture_last_token(model, layers, stop_early=False) as store:
            store["attention_mask"] = mask
            model.model(**batch)
    lengths = mask.sum(dim=1)
    last = lengths - 1 if side == "right" else torch.full_like(lengths, mask.shape[1] - 1)
    rows = torch.arange(len(TEXTS))
    for layer in layers[:-1]:
        assert store[layer].dtype == torch.float32
        assert torch.equal(store[layer], reference[layer + 1][rows, last]), f"layer {layer}"
    # transformers applies the final norm to its last hidden_states entry; the hook sees the block
    # output before that norm (the point the server injects at), so norm(capture) must match.
    final = layers[-1]
    assert not torch.allclose(store[final], reference[final + 1][rows, last])
    with torch.inference_mode():
        normed = model.model.norm(store[final])
    torch.testing.assert_close(normed, reference[final + 1][rows, last], rtol=0, atol=1e-5)


def test_capture_stops_after_the_deepest_hooked_block(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    blocks = decoder_layers(model)
    before = [len(block._forward_hooks) for block in blocks]
    calls: list[int] = []
    handles = [block.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, block in enumerate(blocks)]
    try:
        collect_activations(model, tokenizer, TEXTS[:2], [0, 1], batch_size=8, progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [0, 1]
    assert [len(block._forward_hooks) for block in blocks] == before  # capture removed its own hooks


@pytest.mark.parametrize("side", ["left", "right"])
def test_collect_activations_keeps_input_order_and_matches_unpadded_runs(model_and_tokenizer, side):
    model, tokenizer = model_and_tokenizer
    tokenizer.padding_side = side
    layers = [0, 2]
    acts = collect_activations(model, tokenizer, TEXTS, layers, batch_size=2, progress=False, flush_every=2)
    assert acts.shape == (len(TEXTS), len(layers), model.config.hidden_size)
    assert acts.dtype.name == "float32"
    for i, text in enumerate(TEXTS):
        single = tokenizer([text], return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**single, output_hidden_states=True).hidden_states
        for j, layer in enumerate(layers):
            expected = hidden[layer + 1][0, -1].numpy()
            # Padding changes the attention kernel's reduction order, so allow float noise only.
            assert abs(acts[i, j] - expected).max() < 1e-5, (text, layer)


def test_collect_activations_batch_equals_same_batch_hidden_states(model_and_tokenizer):
    """One batch (longest first, as capture sorts it) gives bit-identical rows."""
    model, tokenizer = model_and_tokenizer
    tokenizer.padding_side = "left"
    acts = collect_activations(model, tokenizer, TEXTS, [1], batch_size=len(TEXTS), progress=False)
    lengths = [len(ids) for ids in tokenizer(TEXTS)["input_ids"]]
    order = sorted(range(len(TEXTS)), key=lambda i: -lengths[i])
    batch = tokenizer([TEXTS[i] for i in order], return_tensors="pt", padding=True)
    with torch.inference_mode():
        hidden = model(**batch, output_hidden_states=True).hidden_states[2][:, -1]
    for row, i in enumerate(order):
        assert torch.equal(torch.from_numpy(acts[i, 0]), hidden[row])


def test_collect_activations_rejects_no_texts(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="no texts"):
        collect_activations(model, tokenizer, [], [0], progress=False)


def test_pooling_weights_leave_out_attention_sinks():
    """Norms per position (hidden = norm x a unit vector); span = where pool > 0."""
    norms = torch.tensor([[900.0, 1.0, 2.0, 100.0, 3.0, 0.0],   # first token outside the span; 100 > 5 x median 2
                          [1.0, 50.0, 0.0, 0.0, 0.0, 0.0],      # two positions: the lower median (1) decides
                          [7.0, 0.0, 0.0, 0.0, 0.0, 0.0],       # one position: kept, whatever its norm
                          [2.0, 3.0, 10.0, 4.0, 0.0, 0.0]])     # 10 <= 5 x median 3: content, kept
    hidden = norms[:, :, None] * torch.tensor([0.6, 0.8])
    spans = [(1, 5), (0, 2), (0, 1), (0, 4)]
    pool = torch.zeros(4, 6)
    for row, (lo, hi) in enumerate(spans):
        pool[row, lo:hi] = 1.0 / (hi - lo)
    expected = torch.tensor([[0, 1 / 3, 1 / 3, 0, 1 / 3, 0],
                             [1, 0, 0, 0, 0, 0],
                             [1, 0, 0, 0, 0, 0],
                             [1 / 4, 1 / 4, 1 / 4, 1 / 4, 0, 0]])
    assert torch.allclose(pooling_weights(hidden, pool, 5.0), expected)
