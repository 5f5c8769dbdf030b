"""Controls and readout on the transformers side: scopes, modes, batch == solo, readout == the library's readout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolab.core.bundle import EmotionBundle
from emolab.core.readout import readout_scale, score_tokens, unit_directions
from emolab.core.steering import Steering
from emolab.steer import HFSteerer, generate
from emolab.steer.rows import RowBatch

EMOTIONS = ["anger", "joy", "sadness"]
PROMPT = [151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198, 151644, 77091, 198]


@pytest.fixture(scope="module")
def steerer(tiny):
    model, _ = tiny
    rng = np.random.default_rng(0)
    vectors = {e: (rng.normal(size=(2, 128)) * 2).astype(np.float32) for e in EMOTIONS}
    bundle = EmotionBundle(EMOTIONS, [1, 2], vectors, {"num_layers": 4})
    return HFSteerer(model, bundle, alpha_scale="raw")


def _block_outputs(model, layer: int):
    """Record block ``layer``'s output of every forward as the next block receives it (after every hook on it)."""
    seen: list[torch.Tensor] = []

    def record(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden.detach().clone())

    handle = model.model.layers[layer + 1].register_forward_pre_hook(record, with_kwargs=True)
    return seen, handle


def _run(model, tokenizer, steerer, steering, tokens=6, prompt=PROMPT):
    return generate(model, tokenizer, [prompt], steerer=steerer, steerings=[steering], max_new_tokens=tokens,
                    ignore_eos=True)[0]


def test_plain_additions_equal_the_old_coefficient_path(tiny, steerer):
    model, tokenizer = tiny
    coeffs = np.array([1.2, 0.0, -0.7], dtype=np.float32)
    by_coeffs = generate(model, tokenizer, [PROMPT], steerer=steerer, coeffs=coeffs, max_new_tokens=8, ignore_eos=True)
    by_steering = _run(model, tokenizer, steerer, Steering(((0, 1.2), (2, -0.7))), tokens=8)
    assert by_coeffs[0] == by_steering
    assert by_steering != _run(model, tokenizer, steerer, None, tokens=8)


def test_generated_scope_leaves_the_prompt_and_prompt_scope_leaves_the_generated_tokens(tiny, steerer):
    model, tokenizer = tiny
    steering = Steering(((0, 3.0), (2, -2.0)))
    plain_seen, handle = _block_outputs(model, 2)
    with torch.no_grad():
        plain = _run(model, tokenizer, steerer, None)
    handle.remove()
    for scope, untouched in (("generated", "prompt"), ("prompt", "generated")):
        seen, handle = _block_outputs(model, 2)
        with torch.no_grad():
            out = _run(model, tokenizer, steerer, Steering(steering.pairs, scope=scope))
        handle.remove()
        if untouched == "prompt":
            assert torch.equal(seen[0], plain_seen[0])  # the prompt's forward: bit for bit the plain model's
            assert out[0] == plain[0]  # so the first generated token is the plain one
            assert not torch.equal(seen[1], plain_seen[1])
        else:
            assert not torch.equal(seen[0], plain_seen[0])
        assert out != plain


def test_prompt_scope_adds_nothing_at_generated_positions(tiny, steerer):
    """With scope prompt, what the hook returns at a generated position is exactly what the block computed."""
    model, tokenizer = tiny
    rows = steerer.rows()
    tables = rows.tables([Steering(((0, 3.0),), scope="prompt")])
    before, after = [], []
    pre = model.model.layers[1].register_forward_hook(lambda m, a, out: before.append(out[0].clone()
                                                      if isinstance(out, tuple) else out.clone()))
    from emolab.steer.row_steering import scope_rows
    with torch.no_grad(), rows.hooked(tables, scope_rows(tables.scopes, "generated", 1, rows.device)):
        post = model.model.layers[1].register_forward_hook(lambda m, a, out: after.append(out[0].clone()
                                                           if isinstance(out, tuple) else out.clone()))
        model(input_ids=torch.tensor([[9707]]))
    pre.remove()
    post.remove()
    assert torch.equal(before[0], after[0])


@pytest.mark.parametrize("modes, pairs, held", [
    (((1, "ablate"),), (), {1: 0.0}),
    (((0, "clamp"),), ((0, 1.5),), {0: 1.5}),
    (((0, "clamp"), (2, "ablate")), ((0, -0.8), (1, 2.0)), {0: -0.8, 2: 0.0}),
])
def test_ablate_and_clamp_hold_the_projection_at_every_position(tiny, steerer, modes, pairs, held):
    model, tokenizer = tiny
    seen = {layer: _block_outputs(model, layer) for layer in (1, 2)}
    with torch.no_grad():
        _run(model, tokenizer, steerer, Steering(pairs, modes=modes), tokens=3)
    controls = steerer.rows().controls
    for index, layer in enumerate((1, 2)):
        outputs, handle = seen[layer]
        handle.remove()
        for out in outputs:  # the prompt's forward, then each fed-back token
            for emotion, level in held.items():
                projection = out[0].double() @ torch.tensor(controls.units[index, emotion]).double()
                np.testing.assert_allclose(projection.numpy(), level * controls.lengths[index, emotion], atol=2e-4)


def test_batch_with_mixed_modes_equals_each_request_alone(tiny, steerer):
    model, tokenizer = tiny
    requests = [
        (PROMPT, Steering(((0, 1.5),))),
        (PROMPT[:9], Steering(((2, 1.0),), modes=((2, "clamp"),), scope="generated")),
        (PROMPT[3:], None),
        (PROMPT, Steering(modes=((1, "ablate"),), scope="prompt")),
    ]
    alone = [_run(model, tokenizer, steerer, s, tokens=5, prompt=p) for p, s in requests]
    batch = RowBatch(model, steerer, pad_id=0)
    with torch.inference_mode():
        logits = batch.prefill([p for p, _ in requests], [s for _, s in requests])
        tokens = [[int(t)] for t in logits.argmax(-1)]
        for _ in range(4):
            logits = batch.step(torch.tensor([t[-1] for t in tokens]))
            for row, t in zip(tokens, logits.argmax(-1).tolist(), strict=True):
                row.append(t)
    assert tokens == alone


def test_served_readout_equals_the_readout_of_the_whole_text(tiny, steerer):
    """An unsteered request's per-token readout (read as it is generated, KV-cached) equals the readout of the
    prompt and reply run through the model at once."""
    model, tokenizer = tiny
    batch = RowBatch(model, steerer, pad_id=0)
    with torch.inference_mode():
        logits = batch.prefill([PROMPT, PROMPT[4:]], [None, Steering(((0, 2.0),))], [True, False])
        prompt_read = batch.last_readout[0]
        reply = [int(logits[0].argmax())]
        fed = []
        for _ in range(4):
            logits = batch.step(torch.tensor([reply[-1], 11]))
            fed.append(batch.last_readout[0, 0])
            reply.append(int(logits[0].argmax()))
    bundle = steerer.bundle
    ids = PROMPT + reply[:-1]
    with torch.no_grad():
        states = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    units = unit_directions(bundle)
    whole = np.stack([states[layer + 1][0].double().numpy() @ units[i].T for i, layer in enumerate([1, 2])], axis=1)
    got = np.concatenate([prompt_read, np.stack(fed)])
    np.testing.assert_allclose(got, whole, rtol=1e-4, atol=1e-4)
    scores = score_tokens(got, readout_scale(bundle), bundle.steering_mask())
    assert scores.shape == (len(ids), 3) and np.isfinite(scores).all()
