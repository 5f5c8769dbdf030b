"""Layer selection: named bands that scale with depth, ``--layers`` parsing, and window choice.

Layer ``L`` always means the output of decoder block ``L`` (0-based), i.e. ``hidden_states[L + 1]``
in transformers terms. The bands split the stack in ninths so they scale with depth:

====== ======================== =====================
band   layers (N = num_layers)  N = 36 (Qwen3-8B)
====== ======================== =====================
early  [N//9, 4N//9)            4-15
mid    [4N//9, 7N//9)           16-27 (the default)
late   [7N//9, N)               28-35
all    [0, N)                   0-35
====== ======================== =====================
"""

from __future__ import annotations

import re

import numpy as np

from emolab.core.errors import EmolabError

__all__ = ["BANDS", "LayerError", "band", "choose_window", "layer_items", "parse_layers"]


class LayerError(EmolabError, ValueError):
    """A layer selection that does not parse or does not fit the model (the ``layers`` setting by default)."""

    def __init__(self, message: str, *, setting: str | None = "layers") -> None:
        super().__init__(message, setting=setting)

BANDS = ("early", "mid", "late", "all")


def band(name: str, num_layers: int) -> list[int]:
    n = num_layers
    bounds = {
        "early": (n // 9, 4 * n // 9),
        "mid": (4 * n // 9, 7 * n // 9),
        "late": (7 * n // 9, n),
        "all": (0, n),
    }
    if name not in bounds:
        raise LayerError(f"unknown layer band {name!r}; choose from {BANDS}")
    lo, hi = bounds[name]
    return list(range(lo, hi))


def layer_items(spec: str) -> list[str | int | range]:
    """The bands, layer ids and id ranges of a layer spec, syntax-checked (bands and bounds need the model's depth)."""
    items: list[str | int | range] = []
    for item in (part.strip().lower() for part in str(spec).split(",")):
        if not item:
            continue
        if item in BANDS:
            items.append(item)
            continue
        span = re.fullmatch(r"(\d+)\s*-\s*(\d+)", item)  # an inclusive range, as tune's windows write it
        if span:
            lo, hi = int(span.group(1)), int(span.group(2))
            if hi < lo:
                raise LayerError(f"layer range {item!r} runs backwards")
            items.append(range(lo, hi + 1))  # kept lazy: parse_layers checks it against the depth first
            continue
        try:
            layer = int(item)
        except ValueError:
            raise LayerError(f"{item!r} is neither a band {BANDS}, a layer id nor a range such as 10-18") from None
        if layer < 0:
            raise LayerError(f"layer {layer} outside 0..(number of layers - 1)")
        items.append(layer)
    if not items:
        raise LayerError("no layers selected")
    return items


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """Parse ``mid``, ``16,17``, ``10-18`` (inclusive), ``mid,30`` or ``all`` into a sorted list of distinct layer ids."""
    layers: set[int] = set()
    for item in layer_items(spec):
        if isinstance(item, str):
            layers.update(band(item, num_layers))
        elif isinstance(item, range):
            if item[-1] >= num_layers:
                raise LayerError(f"layer {item[-1]} outside 0..{num_layers - 1}")
            layers.update(item)
        elif not 0 <= item < num_layers:
            raise LayerError(f"layer {item} outside 0..{num_layers - 1}")
        else:
            layers.add(item)
    if not layers:  # a band can be empty in a very shallow model
        raise LayerError("no layers selected")
    return sorted(layers)


def choose_window(layers: list[int], layer_scores: np.ndarray, window: int) -> tuple[list[int], float]:
    """Best run of ``window`` consecutive layer ids among ``layers`` by mean score.

    ``layer_scores[i]`` belongs to ``layers[i]``. Ties go to the earlier window. Returns the chosen
    layer ids and their mean score.
    """
    if window < 1:
        raise LayerError(f"the window must be at least 1 layer, got {window}", setting="window")
    position = {layer: i for i, layer in enumerate(layers)}
    best: tuple[float, int] | None = None
    for start in layers:
        run = list(range(start, start + window))
        if not all(layer in position for layer in run):
            continue
        score = float(np.mean([layer_scores[position[layer]] for layer in run]))
        if best is None or score > best[0]:
            best = (score, start)
    if best is None:
        raise LayerError(f"the searched layers {layers} hold no {window} consecutive layers", setting="window")
    return list(range(best[1], best[1] + window)), best[0]
