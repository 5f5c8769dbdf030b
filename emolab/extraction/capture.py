"""Capture the residual stream at the last real token, at chosen decoder blocks.

Hooks sit on the blocks themselves, so layer ``L`` is the output of block ``L`` (``hidden_states[L+1]``
in transformers terms). The forward stops after the deepest hooked block: later blocks and the
LM head would only be thrown away.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from tqdm.auto import tqdm

from emolab.core.models import decoder_layers
from emolab.extraction.errors import ExtractError

__all__ = [
    "base_model", "block_output", "capture_last_token", "collect_activations", "collect_span_activations",
    "last_token_index", "pooling_weights", "SINK_RATIO",
]

# A position whose residual norm is over SINK_RATIO x the lower median of its span's norms is an attention
# sink ("massive activation"), not content. In SmolLM2 the first token always is one and the second token
# is one in about one text in 200 (norm 3,000-30,000 against ~130 at layer 14); a single such text moved a
# class's mean state as far as the whole emotion difference. Content positions stay within ~3x.
SINK_RATIO = 5.0


class _StopForward(Exception):
    """Raised by the deepest hook to end a forward pass nobody needs the rest of."""


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row, for left and right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.to(torch.long) * (positions + 1)).argmax(dim=1)


def block_output(output: object) -> torch.Tensor:
    """A decoder block returns a tensor or a tuple whose first item is the hidden states."""
    return output[0] if isinstance(output, (tuple, list)) else output  # type: ignore[index,return-value]


@contextmanager
def capture_last_token(
    model: torch.nn.Module, layers: list[int], *, stop_early: bool = True, float32: bool = True
) -> Iterator[dict]:
    """Within the context, each forward fills ``store[layer]`` with ``[batch, hidden]`` float32.

    Set ``store["attention_mask"]`` before the forward; hooks read it to find the last real token.
    ``collect_activations`` instead sets ``store["last_index"]`` once per batch and asks for the
    model's own dtype (``float32=False``), which keeps the hooks to one gather each.
    """
    blocks = decoder_layers(model)
    store: dict = {}
    deepest = max(layers)
    handles = []

    def make_hook(layer: int):
        def hook(module, args, output):
            hidden = block_output(output)
            index = store.get("last_index")
            if index is None:
                index = last_token_index(store["attention_mask"])
            picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
            store[layer] = picked.float() if float32 else picked
            if stop_early and layer == deepest:
                raise _StopForward

        return hook

    for layer in layers:
        handles.append(blocks[layer].register_forward_hook(make_hook(layer)))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack without the LM head, when the model exposes it."""
    return getattr(model, "model", model)


def collect_activations(
    model: torch.nn.Module,
    tokenizer,
    texts: list[str],
    layers: list[int],
    *,
    batch_size: int = 16,
    max_length: int = 128,
    progress: bool = True,
    desc: str = "capture",
    flush_every: int = 16,
) -> np.ndarray:
    """Last-token residual stream for every text at every layer: float32 ``[n_texts, n_layers, hidden]``.

    Texts are processed longest first (less padding per batch, and an out-of-memory error shows up
    at once rather than at the end); rows come back in input order. Results stay on the device for
    ``flush_every`` batches before one copy to the host, so the host keeps queueing work instead of
    waiting for every batch (on a GPU a per-batch copy cost ~20% of throughput).
    """
    if not texts:
        raise ExtractError("no texts to capture")
    device = next(model.parameters()).device
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(-np.asarray(lengths), kind="stable")
    out: np.ndarray | None = None
    pending: list[tuple[np.ndarray, torch.Tensor]] = []

    def flush() -> None:
        nonlocal out
        host = torch.cat([acts for _, acts in pending]).float().cpu().numpy()
        rows = np.concatenate([idx for idx, _ in pending])
        if out is None:
            out = np.empty((len(texts), len(layers), host.shape[-1]), dtype=np.float32)
        out[rows] = host
        pending.clear()

    stack = base_model(model)
    with torch.inference_mode(), capture_last_token(model, layers, float32=False) as store:
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, unit="batch"):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True, max_length=max_length
            ).to(device)
            store["attention_mask"] = batch["attention_mask"]
            store["last_index"] = last_token_index(batch["attention_mask"])
            try:
                stack(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            except _StopForward:
                pass
            pending.append((idx, torch.stack([store[layer] for layer in layers], dim=1)))
            if len(pending) >= flush_every:
                flush()
        if pending:
            flush()
    assert out is not None
    return out


def pooling_weights(hidden: torch.Tensor, pool: torch.Tensor, sink_ratio: float) -> torch.Tensor:
    """``pool`` (``[batch, seq]``, uniform over each row's span) with attention-sink positions zeroed and
    the rest renormalised. A sink is a span position whose norm in ``hidden`` (``[batch, seq, hidden]``)
    exceeds ``sink_ratio`` x the lower median of the span's norms; the lower median is itself never a
    sink, so every span keeps at least one position."""
    inside = pool > 0
    norms = hidden.norm(dim=-1)
    ordered = torch.where(inside, norms, torch.full_like(norms, float("inf"))).sort(dim=1).values
    middle = ((inside.sum(dim=1) - 1).clamp_min(0) // 2).unsqueeze(1)
    median = ordered.gather(1, middle)
    keep = inside & (norms <= sink_ratio * median)
    weights = keep.to(pool.dtype)
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)


def collect_span_activations(
    model: torch.nn.Module,
    sequences: list[list[int]],
    spans: list[tuple[int, int]],
    layers: list[int],
    *,
    pad_id: int = 0,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "capture",
    sink_ratio: float | None = SINK_RATIO,
) -> dict[str, np.ndarray]:
    """Pooled residual stream over a span of each token sequence, at every layer, in one forward each.

    ``spans[i] = (start, end)`` names positions ``start..end-1`` of ``sequences[i]``. Returns
    ``{"last": ..., "mean": ...}``, each float32 ``[n, n_layers, hidden]``: the state at position
    ``end - 1`` and the mean over the span's content positions (``pooling_weights``: attention sinks,
    positions over ``sink_ratio`` x the span's median norm at that layer, are left out; ``None`` keeps
    every position). Rows are right-padded (real tokens keep their positions and never attend to
    padding) and batched longest first; results come back in input order. ``progress`` shows a bar
    named ``desc``.
    """
    if not sequences:
        raise ExtractError("no sequences to capture")
    for i, (seq, (lo, hi)) in enumerate(zip(sequences, spans, strict=True)):
        if not 0 <= lo < hi <= len(seq):
            raise ExtractError(f"sequence {i}: span ({lo}, {hi}) is not inside its {len(seq)} tokens")
    blocks = decoder_layers(model)
    device = next(model.parameters()).device
    deepest = max(layers)
    store: dict = {}

    def make_hook(layer: int):
        def hook(module, args, output):
            hidden = block_output(output).float()
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            weights = store["pool"] if sink_ratio is None else pooling_weights(hidden, store["pool"], sink_ratio)
            store[layer] = (hidden[rows, store["last"]], torch.einsum("bt,bth->bh", weights, hidden))
            if layer == deepest:
                raise _StopForward

        return hook

    n = len(sequences)
    out = {key: np.empty((n, len(layers), 0), dtype=np.float32) for key in ("last", "mean")}
    order = np.argsort([-len(s) for s in sequences], kind="stable")
    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in layers]
    stack = base_model(model)
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, unit="batch"):
                idx = order[start:start + batch_size]
                width = max(len(sequences[i]) for i in idx)
                ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                pool = torch.zeros((len(idx), width), dtype=torch.float32)
                last = torch.zeros(len(idx), dtype=torch.long)
                for row, i in enumerate(idx):
                    seq, (lo, hi) = sequences[i], spans[i]
                    ids[row, :len(seq)] = torch.tensor(list(seq), dtype=torch.long)
                    mask[row, :len(seq)] = 1
                    pool[row, lo:hi] = 1.0 / (hi - lo)
                    last[row] = hi - 1
                store.update(pool=pool.to(device), last=last.to(device))
                try:
                    stack(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                except _StopForward:
                    pass
                for k, key in enumerate(("last", "mean")):
                    block = torch.stack([store[layer][k] for layer in layers], dim=1).cpu().numpy()
                    if out[key].shape[2] == 0:
                        out[key] = np.empty((n, len(layers), block.shape[2]), dtype=np.float32)
                    out[key][idx] = block
    finally:
        for handle in handles:
            handle.remove()
    return out
