"""The steering contract's arithmetic: coefficients, canonical form, prefix-cache salt."""

from __future__ import annotations

import numpy as np
import pytest

from emolab.steering import SteeringError, SteeringLimits, cache_salt, canonical, coefficients, parse_steering

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


def test_cache_salt_separates_steerings_and_leaves_plain_requests_alone():
    assert cache_salt(np.zeros(6, dtype=np.float32)) is None
    a = coefficients([(1, 1.0), (1, 0.5)], 6)
    b = coefficients([(1, 1.5)], 6)
    c = coefficients([(1, 1.5), (2, 0.1)], 6)
    assert cache_salt(a) == cache_salt(b) and cache_salt(a) != cache_salt(c)
    assert cache_salt(-a) != cache_salt(a)
