"""The one steered generate loop: transformers ``generate`` with steering hooks, batched with left padding.

The HF backend (one request at a time, with stop-string watching), ``emolab eval`` (many conditions
per batch, one steering per row) and the notebook widgets all generate through ``generate``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch

from emolab.core.models import pad_token_id
from emolab.core.steering import Steering
from emolab.steer.hf import HFSteerer
from emolab.steer.row_steering import Readout

__all__ = ["generate", "stop_token_ids"]


def stop_token_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    """The tokens that end a generation: the tokenizer's EOS and the generation config's."""
    stops = {tokenizer.eos_token_id}
    eos = getattr(model.generation_config, "eos_token_id", None)
    stops.update(eos if isinstance(eos, list) else [eos])
    return {int(t) for t in stops if t is not None}


def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    *,
    steerer: HFSteerer | None = None,
    coeffs: np.ndarray | None = None,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    batch_size: int = 64,
    stopping_criteria: Any = None,
    progress: Callable[[str], None] | None = None,
    on_logits: Callable[[torch.Tensor], None] | None = None,
    ignore_eos: bool = False,
    steerings: Sequence[Steering | None] | None = None,
    on_readout: Readout | None = None,
) -> list[list[int]]:
    """Continuation token ids for each prompt, cut before its first stop token.

    ``coeffs``: ``None`` (unsteered), ``[n_emotions]`` for every row, or ``[rows, n_emotions]``: one
    steering per row, so many conditions share one batch (far faster on CPU than a batch each).
    ``steerings``: instead of ``coeffs``, one full ``Steering`` per prompt (modes, scope; None: plain).
    ``on_readout``: called at every chosen block of every forward with the projections before its steering
    (``HFSteerer.steer_rows``; needs a steerer): the prompt's forward first, then one per token fed back.
    ``temperature`` 0 is greedy; otherwise sampling with ``top_p`` (and ``top_k`` when given; None
    keeps the model's generation config). ``seed`` seeds torch's global RNG once, before the first batch.
    ``on_logits``: called at every step, before the token is chosen, with that step's next-token logits
    ``[rows, vocab]`` (float32) as the model made them, before temperature, top_p or any processor (the
    tensor transformers keeps under ``output_logits``, seen as it is made, so a streaming caller can use it).
    ``ignore_eos``: run to ``max_new_tokens`` (or a stopping criterion) through end-of-sequence tokens, which
    stay in the output (vLLM's ``ignore_eos``).
    """
    if (coeffs is not None or steerings is not None or on_readout is not None) and steerer is None:
        raise ValueError("steering needs a steerer")
    if coeffs is not None and steerings is not None:
        raise ValueError("give coeffs or steerings, not both")
    if steerings is not None and len(steerings) != len(prompt_ids):
        raise ValueError(f"{len(steerings)} steerings for {len(prompt_ids)} prompts")
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    stops = stop_token_ids(model, tokenizer)
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=pad)
    if ignore_eos:
        kwargs["eos_token_id"] = None  # transformers: no end-of-sequence criterion
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        if top_k is not None:
            kwargs["top_k"] = top_k
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if stopping_criteria is not None:
        kwargs["stopping_criteria"] = stopping_criteria
    per_row = coeffs is not None and np.asarray(coeffs).ndim == 2
    if seed is not None:
        torch.manual_seed(seed)
    out: list[list[int]] = []
    for start in range(0, len(prompt_ids), batch_size):
        began = time.perf_counter()
        batch = prompt_ids[start:start + batch_size]
        width = max(len(row) for row in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):  # left padding: every row's last prompt token is at the end
            ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
        chunk = np.asarray(coeffs)[start:start + len(batch)] if per_row else coeffs
        if steerings is not None or on_readout is not None:
            rows = steerings[start:start + len(batch)] if steerings is not None else [None] * len(batch)
            steering = steerer.steer_rows(rows, on_readout)
        else:
            steering = steerer.steer(chunk) if steerer is not None else nullcontext()
        with torch.inference_mode(), steering, _logits_hook(model, on_logits):
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        for row in generated[:, width:].tolist():
            cut = len(row) if ignore_eos else next((k for k, token in enumerate(row) if token in stops), len(row))
            out.append(row[:cut])
        if progress is not None:
            progress(f"generated {start + len(batch)}/{len(prompt_ids)} rows ({time.perf_counter() - began:.1f}s)")
    return out


@contextmanager
def _logits_hook(model: torch.nn.Module, on_logits: Callable[[torch.Tensor], None] | None) -> Iterator[None]:
    """Hand ``on_logits`` each forward pass's last-position logits (one pass per generated token)."""
    if on_logits is None:
        yield
        return

    def hook(module, args, output) -> None:
        on_logits(output.logits[:, -1].to(torch.float32, copy=True))

    handle = model.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
