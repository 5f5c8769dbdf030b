"""Slider bounds and steps of the notebook's steering panel (pure functions, no widgets)."""

from __future__ import annotations

import pytest

from emolab.notebook.widgets import DEFAULT_ALPHA_LIMIT, alpha_range, recommended_alphas, slider_step


def test_a_validated_range_is_used_as_recorded():
    assert alpha_range({"validated_alpha_range": [-0.5, 2.0]}) == (-0.5, 2.0)
    with pytest.raises(ValueError, match="increasing"):
        alpha_range({"validated_alpha_range": [2.0, -0.5]})


def test_recommended_alphas_set_the_range_three_times_the_largest_at_least_one():
    small = {"alpha_scale": "normalized", "alpha_recommendations_scale": "normalized",
             "alpha_recommendations": {"joy": 0.33, "fear": 0.31, "disgust": 0.19}}
    assert alpha_range(small) == (-1.0, 1.0)
    large = dict(small, alpha_recommendations={"joy": 0.5, "fear": 0.8})
    assert alpha_range(large) == pytest.approx((-2.4, 2.4))
    huge = dict(small, alpha_recommendations={"joy": 5.0})
    assert alpha_range(huge) == (-DEFAULT_ALPHA_LIMIT, DEFAULT_ALPHA_LIMIT)
    assert alpha_range(dict(large, limits={"max_alpha": 2.0})) == (-2.0, 2.0)


def test_recommendations_on_another_scale_are_ignored():
    other = {"alpha_scale": "raw", "alpha_recommendations_scale": "normalized", "alpha_recommendations": {"joy": 0.3}}
    assert recommended_alphas(other) == {}
    assert alpha_range(other) == (-DEFAULT_ALPHA_LIMIT, DEFAULT_ALPHA_LIMIT)
    assert alpha_range({"limits": {"max_alpha": 1.5}}) == (-1.5, 1.5)


def test_slider_step_gives_fine_steps_on_small_ranges():
    assert slider_step(-1.0, 1.0) == 0.01
    assert slider_step(-3.0, 3.0) == 0.05
