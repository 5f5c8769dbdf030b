"""Layer bands, ``--layers`` parsing and the window choice."""

from __future__ import annotations

import numpy as np
import pytest

from emolab.core.layers import BANDS, LayerError, band, choose_window, parse_layers


def test_default_band_for_qwen3_8b_is_16_to_27():
    assert band("mid", 36) == list(range(16, 28))
    assert band("early", 36) == list(range(4, 16))
    assert band("late", 36) == list(range(28, 36))
    assert band("all", 36) == list(range(36))


def test_bands_for_smollm2_and_tiny_models():
    assert band("mid", 30) == list(range(13, 23))
    assert band("early", 30) == list(range(3, 13))
    assert band("late", 30) == list(range(23, 30))
    assert band("mid", 4) == [1, 2]
    assert band("late", 4) == [3]


@pytest.mark.parametrize("n", [4, 9, 12, 24, 28, 30, 32, 36, 40, 48, 64, 80])
def test_bands_tile_the_stack_above_the_first_ninth(n):
    early, mid, late = band("early", n), band("mid", n), band("late", n)
    assert early + mid + late == list(range(n // 9, n))
    assert mid and late
    assert band("all", n) == list(range(n))


def test_parse_layers():
    assert parse_layers("mid", 36) == list(range(16, 28))
    assert parse_layers("mid,30", 36) == list(range(16, 28)) + [30]
    assert parse_layers(" 5 , 3,5 ", 36) == [3, 5]
    assert parse_layers("early,mid", 36) == list(range(4, 28))
    assert parse_layers("ALL", 8) == list(range(8))
    assert parse_layers(7, 8) == [7]
    assert parse_layers("6-9", 36) == [6, 7, 8, 9]  # inclusive, the way tune writes windows
    assert parse_layers("10 - 11,mid", 36) == [10, 11, *range(16, 28)]
    assert parse_layers("5-5", 36) == [5]


@pytest.mark.parametrize(
    ("spec", "message"),
    [("middle", "neither a band"), ("36", "outside 0..35"), ("-1", "outside"), ("", "no layers"), (",", "no layers"),
     ("20-6", "runs backwards"), ("30-40", "outside 0..35"), ("6-", "neither a band"),
     ("0-99999999999", "outside 0..35")],  # checked before it is expanded: no hang, no memory blow-up
)
def test_parse_layers_errors_name_the_setting_not_a_flag(spec, message):
    with pytest.raises(LayerError) as info:
        parse_layers(spec, 36)
    assert message in str(info.value) and "--" not in str(info.value)
    assert info.value.setting == "layers"  # the CLI turns it into --layers
    assert set(BANDS) == {"early", "mid", "late", "all"}


def test_choose_window_picks_the_best_consecutive_run():
    layers = [10, 11, 12, 13, 14, 15]
    scores = np.array([0.60, 0.70, 0.90, 0.80, 0.85, 0.50])
    # Windows of 3: 0.733, 0.800, 0.850, 0.717 -> 12..14.
    chosen, mean = choose_window(layers, scores, 3)
    assert chosen == [12, 13, 14]
    assert mean == pytest.approx((0.90 + 0.80 + 0.85) / 3, abs=1e-12)
    assert choose_window(layers, scores, 1) == ([12], 0.90)
    assert choose_window(layers, scores, 6)[0] == layers


def test_choose_window_ties_go_to_the_earlier_window():
    assert choose_window([0, 1, 2, 3], np.array([0.7, 0.8, 0.7, 0.8]), 2)[0] == [0, 1]


def test_choose_window_never_spans_a_gap():
    # 20 and 30 are both great but not consecutive; 16-18 is the only run of 3.
    layers = [16, 17, 18, 20, 30, 31]
    scores = np.array([0.6, 0.6, 0.6, 0.99, 0.99, 0.99])
    assert choose_window(layers, scores, 3)[0] == [16, 17, 18]
    assert choose_window(layers, scores, 2)[0] == [30, 31]
    with pytest.raises(LayerError, match="no 4 consecutive layers") as info:
        choose_window(layers, scores, 4)
    assert info.value.setting == "window"
    with pytest.raises(LayerError, match="at least 1") as info:
        choose_window(layers, scores, 0)
    assert info.value.setting == "window"
