"""Every token's projection on a bundle's directions, at the chosen blocks, in one forward per batch.

The readout (``emolab.core.readout``) needs the projection of the residual stream at *every* position, not
a pooled state; and a bundle records the spread of those projections over held-out texts at extraction
(``reference_from_texts``), so that a readout score means the same thing on every prompt. Attention sinks
(``capture.SINK_RATIO``) are flagged per token and layer: shown in a readout, left out of the reference.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from emolab.core.models import decoder_layers
from emolab.core.readout import ReadoutReference
from emolab.extraction.capture import SINK_RATIO, _StopForward, base_model, block_output
from emolab.extraction.errors import ExtractError

__all__ = ["reference_from_texts", "token_projections"]


def token_projections(model: torch.nn.Module, sequences: list[list[int]], layers: list[int], directions: np.ndarray,
                      *, pad_id: int = 0, batch_size: int = 16, progress: bool = False,
                      desc: str = "readout") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(projections, sinks)``: per sequence ``[T, n_layers, n_dirs]`` float32 projections of the block
    outputs on ``directions`` (``[n_layers, n_dirs, hidden]``, one set per layer) and ``[T, n_layers]`` bool,
    True where the position is an attention sink at that layer (norm over ``SINK_RATIO`` x the sequence's
    lower median). Rows are right-padded (real tokens keep their positions); results in input order."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ExtractError("token_projections needs non-empty token sequences")
    blocks = decoder_layers(model)
    param = next(model.parameters())
    units = torch.as_tensor(np.asarray(directions, dtype=np.float32), device=param.device)
    deepest = max(layers)
    store: dict = {}

    def make_hook(index: int, layer: int):
        def hook(module, args, output):
            hidden = block_output(output).float()
            norms = hidden.norm(dim=-1)
            real = store["mask"]
            ordered = torch.where(real, norms, torch.full_like(norms, float("inf"))).sort(dim=1).values
            middle = ((real.sum(dim=1) - 1).clamp_min(0) // 2).unsqueeze(1)
            store[layer] = (hidden @ units[index].T, norms > SINK_RATIO * ordered.gather(1, middle))
            if layer == deepest:
                raise _StopForward

        return hook

    projections: list[np.ndarray | None] = [None] * len(sequences)
    sinks: list[np.ndarray | None] = [None] * len(sequences)
    order = np.argsort([-len(s) for s in sequences], kind="stable")
    handles = [blocks[layer].register_forward_hook(make_hook(i, layer)) for i, layer in enumerate(layers)]
    stack = base_model(model)
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(sequences), batch_size), desc=desc, disable=not progress, unit="batch"):
                idx = order[start:start + batch_size]
                width = max(len(sequences[i]) for i in idx)
                ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, :len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
                    mask[row, :len(sequences[i])] = 1
                store["mask"] = mask.bool().to(param.device)
                try:
                    stack(input_ids=ids.to(param.device), attention_mask=mask.to(param.device), use_cache=False)
                except _StopForward:
                    pass
                proj = torch.stack([store[layer][0] for layer in layers], dim=2).cpu().numpy()  # [B, T, L, E]
                sink = torch.stack([store[layer][1] for layer in layers], dim=2).cpu().numpy()  # [B, T, L]
                for row, i in enumerate(idx):
                    projections[i] = proj[row, :len(sequences[i])].astype(np.float32)
                    sinks[i] = sink[row, :len(sequences[i])]
    finally:
        for handle in handles:
            handle.remove()
    return projections, sinks  # type: ignore[return-value]


def reference_from_texts(model: torch.nn.Module, tokenizer, texts: list[str], layers: list[int],
                         directions: np.ndarray, *, source: str, batch_size: int = 16, max_length: int = 128,
                         progress: bool = False) -> ReadoutReference:
    """Mean and standard deviation of every content token's projection (sinks left out) over ``texts``,
    tokenized as the readout of a plain text tokenizes (the tokenizer's special tokens added)."""
    sequences = [ids for ids in tokenizer(texts, add_special_tokens=True, truncation=True,
                                          max_length=max_length)["input_ids"] if ids]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    projections, sinks = token_projections(model, sequences, layers, directions, pad_id=int(pad),
                                           batch_size=batch_size, progress=progress, desc="readout reference")
    values = np.concatenate(projections).astype(np.float64)  # [N, L, E]
    keep = ~np.concatenate(sinks)  # [N, L]
    counts = keep.sum(axis=0)[:, None]  # [L, 1]
    mean = (values * keep[:, :, None]).sum(axis=0) / np.maximum(counts, 1)
    var = (((values - mean) ** 2) * keep[:, :, None]).sum(axis=0) / np.maximum(counts - 1, 1)
    return ReadoutReference(list(layers), mean, np.sqrt(var), int(keep.all(axis=1).sum()), source)
