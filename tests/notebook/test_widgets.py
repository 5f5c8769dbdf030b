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


def test_panel_controls_reach_the_generator_as_one_steering(tiny):
    """Scope, a mode per slider and the derived directions: the panel's reply is the steerer's own."""
    import numpy as np

    from emolab.core.bundle import EmotionBundle
    from emolab.core.circumplex import NRC_VAD, derive
    from emolab.core.models import chat_prompt_ids
    from emolab.core.steering import Steering
    from emolab.notebook.widgets import HFGenerator, SteeringPanel
    from emolab.steer import generate

    model, tokenizer = tiny
    rng = np.random.default_rng(1)
    emotions = list(NRC_VAD)
    bundle = derive(EmotionBundle(emotions, [1, 2], {e: rng.normal(size=(2, 128)).astype(np.float32) * 3 for e in emotions},
                                  {"num_layers": 4}))
    generator = HFGenerator(model, tokenizer, bundle, max_new_tokens=6, alpha_scale="raw")
    panel = SteeringPanel(generator, prompt="Hello there")
    assert list(panel.sliders)[-2:] == ["valence", "arousal"] and panel.scope.value == "all"
    panel.set_alphas({"joy": 1.0, "valence": -0.5, "fear": 0.7})
    panel.set_controls({"fear": "ablate", "sadness": "clamp"}, scope="generated")
    baseline, steered = panel.generate()
    assert panel.alphas() == {"joy": 1.0, "valence": -0.5}  # the ablated emotion's slider is not read
    expected = Steering(((3, 1.0), (6, -0.5), (4, 0.0)), modes=((2, "ablate"), (4, "clamp")), scope="generated")
    ids = generate(model, tokenizer, [chat_prompt_ids(tokenizer, [{"role": "user", "content": "Hello there"}])],
                   steerer=generator.steerer, steerings=[expected], max_new_tokens=6)[0]
    assert steered == tokenizer.decode(ids, skip_special_tokens=True)
    assert "fear ablate" in panel.steered.value and "generated only" in panel.steered.value
