"""The steering contract's arithmetic: coefficients, canonical form, prefix-cache salt."""

from __future__ import annotations

import numpy as np
import pytest

from emolab.core.steering import (
    SteeringError,
    SteeringLimits,
    canonical,
    coefficients,
    combine_cache_salt,
    parse_steering,
    steering_salt,
)

EMOTIONS = ["anger", "joy", "sadness", "disgust", "fear", "surprise"]


def test_pairs_names_ids_and_repeats():
    pairs = parse_steering(["joy", 1.5, 0, "-0.5", 1, 0.25, "4", 2], EMOTIONS)
    assert pairs == [(1, 1.5), (0, -0.5), (1, 0.25), (4, 2.0)]
    assert coefficients(pairs, 6).tolist() == [-0.5, 1.75, 0.0, 0.0, 2.0, 0.0]
    assert canonical(pairs) == [1.0, 1.5, 0.0, -0.5, 1.0, 0.25, 4.0, 2.0]
    assert parse_steering(canonical(pairs), EMOTIONS) == pairs  # the engine re-parses the canonical form
    assert parse_steering(None, EMOTIONS) == parse_steering([], EMOTIONS) == []


def test_limits_are_configurable():
    limits = SteeringLimits(max_alpha=2.0, max_pairs=1)
    assert parse_steering([1, 2.0], EMOTIONS, limits) == [(1, 2.0)]
    with pytest.raises(SteeringError, match="exceeds"):
        parse_steering([1, 2.01], EMOTIONS, limits)
    with pytest.raises(SteeringError, match="at most 1"):
        parse_steering([1, 1.0, 2, 1.0], EMOTIONS, limits)


def test_steering_salt_separates_steerings_and_leaves_plain_requests_alone():
    key = b"k" * 32
    assert steering_salt(np.zeros(6, dtype=np.float32), key) is None
    a = coefficients([(1, 1.0), (1, 0.5)], 6)
    b = coefficients([(1, 1.5)], 6)
    c = coefficients([(1, 1.5), (2, 0.1)], 6)
    assert steering_salt(a, key) == steering_salt(b, key) and steering_salt(a, key) != steering_salt(c, key)
    assert steering_salt(-a, key) != steering_salt(a, key)


def test_steering_salt_is_keyed_so_clients_cannot_compute_it():
    """The old salt was a public hash of the coefficients; a client could send it as its own cache_salt."""
    import hashlib

    coeffs = coefficients([(4, 3.0)], 6)
    public = "emolab-" + hashlib.sha256(coeffs.tobytes()).hexdigest()[:16]
    salts = {steering_salt(coeffs, key) for key in (b"a" * 32, b"b" * 32)}
    assert len(salts) == 2 and public not in salts


@pytest.mark.parametrize("client", ["s:abc", "u3:abc", "", "x|s:0", "u1:x|s:0"])
def test_client_salts_live_in_their_own_namespace(client):
    steered = steering_salt(coefficients([(4, 3.0)], 6), b"k" * 32)
    combined = combine_cache_salt(client, None)
    assert combined != steered and not combined.startswith("s:")
    assert combine_cache_salt(client, steered) not in (steered, combined)
    assert combine_cache_salt(None, steered) == steered
    assert combine_cache_salt(None, None) is None
    # injective: a client salt that spells out "<other client salt>|<steering salt>" is still its own salt
    assert combine_cache_salt(f"x|{steered}", None) != combine_cache_salt("x", steered)


@pytest.mark.parametrize("ident", ["--1", "²", "1.5e3", " ", "0x1", "١"])
def test_odd_emotion_ids_are_clear_errors(ident):
    with pytest.raises(SteeringError, match="unknown emotion"):
        parse_steering([ident, 1.0], EMOTIONS)


@pytest.mark.parametrize("alpha", [10**400, -(10**400), "1e999", float("nan")])
def test_huge_or_non_finite_alphas_are_clear_errors(alpha):
    with pytest.raises(SteeringError, match="finite|exceeds"):
        parse_steering([1, alpha], EMOTIONS)
