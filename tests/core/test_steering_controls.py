"""Steering controls: the request fields (scope, a mode per emotion) and the operator, against hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolab.core.steering import Steering, SteeringError
from emolab.core.steering_ops import ControlTables, steer_rows

EMOTIONS = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]


def test_body_with_controls_parses_in_xargs_and_at_the_top_level():
    body = {"vllm_xargs": {"steering": ["fear", 0.5, "joy", 1.0], "steering_modes": ["joy", "clamp", 0, "ablate"],
                           "steering_scope": "generated"}}
    steering = Steering.from_body(body, EMOTIONS)
    assert steering.pairs == ((2, 0.5), (3, 1.0))
    assert steering.modes == ((0, "ablate"), (3, "clamp"))
    assert steering.scope == "generated" and not steering.adds_only
    top = Steering.from_body({"steering": ["fear", 0.5, "joy", 1.0], "steering_modes": {"joy": "clamp", "anger": "ablate"},
                              "steering_scope": "GENERATED"}, EMOTIONS)
    assert top == steering
    assert steering.engine_args() == {"steering": [2.0, 0.5, 3.0, 1.0], "steering_modes": [0.0, "ablate", 3.0, "clamp"],
                                      "steering_scope": "generated"}
    # the engine's own form parses back to the same steering
    assert Steering.from_body({"vllm_xargs": steering.engine_args()}, EMOTIONS) == steering
    assert steering.controls(EMOTIONS) == {"steering_modes": ["anger", "ablate", "joy", "clamp"],
                                           "steering_scope": "generated"}
    assert steering.describe(EMOTIONS) == "fear=+0.5, joy clamp +1, anger ablate (generated only)"


def test_add_mode_is_the_default_and_plain_steering_is_unchanged():
    plain = Steering.from_body({"vllm_xargs": {"steering": [2, 0.5]}}, EMOTIONS)
    explicit = Steering.from_body({"vllm_xargs": {"steering": [2, 0.5], "steering_modes": [2, "add"],
                                                  "steering_scope": "all"}}, EMOTIONS)
    assert plain == explicit and plain.adds_only
    assert plain.engine_args() == {"steering": [2.0, 0.5]}
    secret = b"k" * 32
    assert plain.salt(6, secret) == Steering(((2, 0.5),)).salt(6, secret)


def test_ablate_alone_steers_and_every_control_has_its_own_salt():
    ablate = Steering.from_body({"steering_modes": ["fear", "ablate"]}, EMOTIONS)
    assert ablate and ablate.pairs == ()
    secret = b"k" * 32
    salts = {
        Steering(((2, 0.5),)).salt(6, secret),
        Steering(((2, 0.5),), scope="prompt").salt(6, secret),
        Steering(((2, 0.5),), scope="generated").salt(6, secret),
        Steering(((2, 0.5),), modes=((2, "clamp"),)).salt(6, secret),
        ablate.salt(6, secret),
    }
    assert None not in salts and len(salts) == 5
    assert Steering(scope="prompt").salt(6, secret) is None and not Steering(scope="prompt")


@pytest.mark.parametrize("body, param, words", [
    ({"steering_scope": "decode"}, "steering_scope", "must be one of ['all', 'prompt', 'generated']"),
    ({"steering_scope": 3}, "steering_scope", "must be one of"),
    ({"vllm_xargs": {"steering_scope": "x"}}, "vllm_xargs.steering_scope", "must be one of"),
    ({"steering_modes": ["fear"]}, "steering_modes", "odd number of items"),
    ({"steering_modes": "fear"}, "steering_modes", "must be a flat list"),
    ({"steering_modes": ["rage", "clamp"]}, "steering_modes", "unknown emotion 'rage'"),
    ({"steering_modes": [9, "clamp"]}, "steering_modes", "unknown emotion id 9"),
    ({"steering_modes": ["fear", "boost"]}, "steering_modes", "mode must be one of ['add', 'ablate', 'clamp']"),
    ({"steering_modes": ["fear", "ablate", 2, "clamp"]}, "steering_modes", "given a mode twice"),
    ({"steering_modes": ["fear", "clamp"]}, "steering_modes", "clamp needs a target level"),
    ({"steering": ["fear", 0.5], "steering_modes": ["fear", "ablate"]}, "steering_modes", "takes no alpha"),
    ({"steering_scope": "all", "vllm_xargs": {"steering_scope": "all"}}, "steering_scope", "give steering_scope once"),
])
def test_bad_controls_name_their_field(body, param, words):
    with pytest.raises(SteeringError) as err:
        Steering.from_body(body, EMOTIONS)
    assert err.value.param == param and words in str(err.value)


def _tables(seed=0, n=4, hidden=16, layers=2):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(layers, n, hidden)).astype(np.float32) * rng.uniform(0.5, 3, size=(layers, n, 1))
    basis[1, 3] = 0.0  # emotion 3 has no direction at the second layer (per-emotion layers)
    return ControlTables.of(basis)


def _rows(tables, steerings, n):
    """Row tables for a list of steerings (row 0 = plain), as steer_rows takes them."""
    layers = tables.basis.shape[0]
    add = np.zeros((len(steerings) + 1, n), dtype=np.float32)
    solve = np.zeros((len(steerings) + 1, layers, n, n), dtype=np.float32)
    target = np.zeros((len(steerings) + 1, layers, n), dtype=np.float32)
    for r, steering in enumerate(steerings, start=1):
        plan = steering.plan(n)
        add[r] = plan.add
        solve[r], target[r] = tables.constraint_row(plan)
    return torch.tensor(add), torch.tensor(solve), torch.tensor(target)


def _apply(tables, layer, hidden, rows, add, solve, target):
    t = torch.tensor
    return steer_rows(hidden, rows, add, t(tables.basis[layer]), t(tables.units[layer]), t(tables.cross[layer]),
                      solve[:, layer], target[:, layer])


def test_operator_matches_hand_computation_for_each_mode():
    n, tables = 4, _tables()
    steerings = [
        Steering(((0, 0.7), (2, -1.2))),  # two additions
        Steering(((0, 0.5),), modes=((1, "ablate"),)),  # add one, remove another
        Steering(((1, 0.8), (2, -0.3)), modes=((1, "clamp"), (2, "clamp"))),  # two held at once
        Steering(((3, 1.5),), modes=((3, "clamp"),)),  # held where it has a direction, nothing where not
    ]
    add, solve, target = _rows(tables, steerings, n)
    torch.manual_seed(1)
    hidden = torch.randn(10, 16, dtype=torch.float64).float() * 4
    rows = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    for layer in range(2):
        out, before = _apply(tables, layer, hidden, rows, add, solve, target)
        basis, units = tables.basis[layer].astype(np.float64), tables.units[layer].astype(np.float64)
        h = hidden.numpy().astype(np.float64)
        np.testing.assert_allclose(before.numpy(), h @ units.T, rtol=1e-5, atol=1e-4)
        got = out.numpy().astype(np.float64)
        for t, r in enumerate(rows.tolist()):
            if r == 0:
                assert torch.equal(out[t], hidden[t])  # the plain row: bit for bit
            elif r == 1:
                np.testing.assert_allclose(got[t], h[t] + 0.7 * basis[0] - 1.2 * basis[2], rtol=1e-5, atol=1e-4)
            elif r == 2:
                expected = h[t] + 0.5 * basis[0]
                expected -= (expected @ units[1]) * units[1]
                np.testing.assert_allclose(got[t], expected, rtol=1e-5, atol=1e-4)
                assert abs(got[t] @ units[1]) < 1e-4  # ablate leaves zero projection
            elif r == 3:  # clamp: both projections at their levels, the rest of h moved only within their span
                lengths = tables.lengths[layer]
                np.testing.assert_allclose(got[t] @ units[1], 0.8 * lengths[1], rtol=1e-5, atol=1e-4)
                np.testing.assert_allclose(got[t] @ units[2], -0.3 * lengths[2], rtol=1e-5, atol=1e-4)
                span = units[[1, 2]]
                residual = (got[t] - h[t]) - span.T @ np.linalg.lstsq(span.T, got[t] - h[t], rcond=None)[0]
                assert np.abs(residual).max() < 1e-4
            else:
                if layer == 0:
                    np.testing.assert_allclose(got[t] @ units[3], 1.5 * tables.lengths[0, 3], rtol=1e-5, atol=1e-4)
                else:
                    assert np.abs(got[t] - h[t]).max() < 1e-5  # no direction at this layer: nothing to hold


def test_a_clamp_is_a_dose_that_does_not_depend_on_the_context():
    n, tables = 4, _tables(seed=3)
    add, solve, target = _rows(tables, [Steering(((2, 0.6),), modes=((2, "clamp"),))], n)
    torch.manual_seed(0)
    contexts = torch.randn(6, 16) * torch.tensor([0.1, 1, 10, 100, 3, 30])[:, None]
    out, _ = _apply(tables, 0, contexts, torch.ones(6, dtype=torch.int64), add, solve, target)
    levels = out.double() @ torch.tensor(tables.units[0, 2]).double()
    np.testing.assert_allclose(levels.numpy(), 0.6 * tables.lengths[0, 2], rtol=1e-4)


def test_parallel_held_directions_are_refused():
    basis = np.zeros((1, 3, 8), dtype=np.float32)
    basis[0, 0, 0], basis[0, 1, 0], basis[0, 2, 1] = 1.0, 2.0, 1.0  # emotions 0 and 1 point the same way
    tables = ControlTables.of(basis)
    with pytest.raises(SteeringError, match="nearly\\) parallel"):
        tables.constraint_row(Steering(((0, 1.0), (1, 1.0)), modes=((0, "clamp"), (1, "clamp"))).plan(3))
    tables.constraint_row(Steering(((0, 1.0),), modes=((0, "clamp"), (2, "ablate"))).plan(3))  # independent: fine


def test_bfloat16_hidden_states_are_steered_in_float32_and_cast_once():
    n, tables = 4, _tables(seed=5)
    add, solve, target = _rows(tables, [Steering(((1, 0.4),), modes=((1, "clamp"),))], n)
    hidden = (torch.randn(3, 16) * 5).to(torch.bfloat16)
    out, _ = _apply(tables, 0, hidden, torch.tensor([1, 0, 1]), add, solve, target)
    assert out.dtype == torch.bfloat16 and torch.equal(out[1], hidden[1])
    level = out[0].double() @ torch.tensor(tables.units[0, 1]).double()
    assert abs(level.item() - 0.4 * tables.lengths[0, 1]) < 0.05 * float(hidden[0].float().norm())  # bf16 rounding


def test_fused_form_computes_the_same_delta_eager_and_compiled():
    """The broadcast-and-sum form (what vLLM's compiled graph runs) against the matrix products (eager): the
    same sums in another order, so equal to float32 rounding; and the compiled operator (fused while traced)."""
    from emolab.core.steering_ops import steering_delta

    n, tables = 4, _tables(seed=3)
    steerings = [Steering(((0, 0.7), (2, -1.2))), Steering(((0, 0.5),), modes=((1, "ablate"),)),
                 Steering(((1, 0.8), (2, -0.3)), modes=((1, "clamp"), (2, "clamp")))]
    add, solve, target = _rows(tables, steerings, n)
    torch.manual_seed(2)
    hidden = (torch.randn(12, 16) * 4).to(torch.bfloat16)
    rows = torch.tensor([0, 1, 2, 3] * 3)
    t = torch.tensor
    for layer in range(2):
        args = (hidden, rows, add, t(tables.basis[layer]), t(tables.units[layer]), t(tables.cross[layer]),
                solve[:, layer], target[:, layer])
        delta, before = steering_delta(*args, fused=False)
        fused_delta, fused_before = steering_delta(*args, fused=True)
        compiled_delta, compiled_before = torch.compile(steering_delta, fullgraph=True, dynamic=False)(*args)
        assert delta.abs().max() > 1 and (delta[rows == 0] == 0).all()
        for got, want in ((fused_delta, delta), (fused_before, before), (compiled_delta, delta),
                          (compiled_before, before)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        assert (fused_delta[rows == 0] == 0).all() and (compiled_delta[rows == 0] == 0).all()
        # additions only (no constraint tables): the same
        plain = steering_delta(*args[:6], fused=False)[0]
        torch.testing.assert_close(steering_delta(*args[:6], fused=True)[0], plain, rtol=1e-5, atol=1e-4)
