"""The one way to add to a decoder block's output in transformers: ``push`` (a forward hook per block).

The injection point is the steering contract's (output of block L, every position, prompt and
generated tokens alike); the HF steerer and the learned-direction fit both go through here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from emolab.core.models import decoder_layers

__all__ = ["push"]


@contextmanager
def push(model: torch.nn.Module, layers: Sequence[int], additions: Sequence[torch.Tensor]) -> Iterator[None]:
    """Add ``additions[i]`` to the output of block ``layers[i]`` inside the context.

    Each addition broadcasts against the block's ``[batch, seq, hidden]`` output: ``[hidden]`` for
    every row, ``[batch, 1, hidden]`` for one per row. An addition may require grad: the sum stays in
    the graph, so a loss can be differentiated with respect to the push. The hooks are removed on exit.
    """
    blocks = decoder_layers(model)
    handles = []
    for layer, add in zip(layers, additions, strict=True):
        def hook(module, args, output, add=add):
            if isinstance(output, (tuple, list)):
                return (output[0] + add, *output[1:])
            return output + add

        handles.append(blocks[layer].register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
