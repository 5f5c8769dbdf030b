"""A batch of sequences that rows join and leave between steps, each row with its own steering.

``RowBatch`` keeps one key/value cache for every running row, left-padded so that all rows end at the same
column: row ``i`` holds its ``lengths[i]`` real tokens in the last columns, ``mask`` marks them, and each
row's positions are its own (``position_ids`` count its real tokens only). ``prefill`` runs joining prompts
as a batch of their own (left-padded among themselves), then merges their cache into the running one
(padding whichever side is shorter on the left); ``step`` feeds one token per row; ``keep`` drops finished
rows and the leading columns no remaining row uses, so the cache never holds more than
``rows x longest row`` positions.

Steering: every row carries its own ``Steering`` (pairs, a mode per emotion, a scope); the rows' tables
(``RowSteering.tables``, row 0 the plain model) are rebuilt only when the rows change, and every forward
runs inside ``RowSteering.hooked``: each position points at its row, or at 0 where the row does not steer in
this phase (``prefill`` is the prompt, ``step`` a generated token) or the position is padding. A batch with
no steered row and no readout hooks nothing. A row that asks for a readout gets, after each forward, its
positions' projections before steering at every chosen block (``last_readout``).

Numerics: a row alone runs exactly as ``model.generate`` runs it (same inputs, same cache, same mask), so
its logits are bit-identical. Beside other rows, matrix products of another shape and the padding mask
change float rounding (fp32 on CPU: a few 1e-5 in the logits). ``batching_problem`` checks at start-up that
a model gives a row the same distribution padded beside a longer row as alone (a model that ignores
``position_ids`` or the mask would not, nor would one whose cache is not plain key/value tensors), and says
why when it cannot be batched.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from emolab.core.errors import EmolabError
from emolab.core.steering import Steering
from emolab.steer.hf import HFSteerer
from emolab.steer.row_steering import RowTables, scope_rows

RowSteer = Steering | np.ndarray | None  # a row's steering (coefficients alone: additions everywhere)

__all__ = ["PROBE_TOLERANCE", "BatchingError", "RowBatch", "batching_problem"]

# Largest |log-probability| difference (the 20 likeliest tokens of each probed step) allowed between a row alone
# and the same row left-padded beside a longer one: {fp32: ..., other dtypes: ...}. SmolLM2 on CPU differs by
# < 6e-5 (fp32) and 0 (bf16); wrapped to ignore position_ids, by 3.1 (fp32) and 2.6 (bf16).
PROBE_TOLERANCE = {True: 1e-2, False: 0.25}


class BatchingError(EmolabError, RuntimeError):
    """This model's cache or forward cannot be shared by rows of different lengths."""


def _cache_class():
    from transformers import DynamicCache

    return DynamicCache


def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of every layer, each ``[batch, heads, positions, head_dim]``."""
    names = {type(layer).__name__ for layer in cache.layers}  # transformers >= 4.56 (pyproject asks 4.57)
    if names != {"DynamicLayer"}:
        raise BatchingError(f"its cache has {sorted(names)} layers, not plain key/value layers")
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_of(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]):
    cache = _cache_class()()
    for index, (keys, values) in enumerate(pairs):
        cache.update(keys, values, index)
    return cache


def _left_pad(x: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dimension -2 (positions) on the left to ``width`` (``[..., positions, dim]``)."""
    return F.pad(x, (0, 0, width - x.shape[-2], 0)) if x.shape[-2] < width else x


class RowBatch:
    """The running rows of a batched generation: their cache, padding mask, lengths and steering."""

    def __init__(self, model: torch.nn.Module, steerer: HFSteerer | None, pad_id: int) -> None:
        self.model = model
        self.steerer = steerer
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self.forward_kwargs = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.clear()

    def clear(self) -> None:
        self.cache = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        self.lengths = torch.zeros((0,), dtype=torch.long, device=self.device)
        self.steerings: list[Steering | None] = []
        self.reads: list[bool] = []  # which rows want their readout
        self.tables: RowTables | None = None
        self.last_readout: np.ndarray | None = None  # [rows of the last forward, positions, layers, n] float32

    def __len__(self) -> int:
        return len(self.steerings)

    @property
    def width(self) -> int:
        """Positions per row in the cache (padding included)."""
        return int(self.mask.shape[1])

    def slots(self) -> int:
        """Key/value positions the cache holds now, read from its tensors (rows x width)."""
        if self.cache is None:
            return 0
        keys = _layers(self.cache)[0][0]
        return int(keys.shape[0] * keys.shape[-2])

    # ------------------------------------------------------------------------------ steering
    def _steering(self, row: RowSteer) -> Steering | None:
        if row is None or isinstance(row, Steering):
            return row if row else None
        return Steering(tuple((int(e), float(a)) for e, a in enumerate(np.asarray(row, np.float32)) if a)) or None

    def _tables_for(self, steerings: list[Steering | None]) -> RowTables | None:
        if self.steerer is None or not any(steerings):
            return None
        return self.steerer.rows().tables(steerings)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor, cache,
                 tables: RowTables | None, phase: str, reads: list[bool], attention: torch.Tensor) -> torch.Tensor:
        rows = None if tables is None else scope_rows(tables.scopes, phase, ids.shape[1], self.device, mask)
        collected: dict[int, torch.Tensor] = {}
        readout = None
        if self.steerer is not None and any(reads):
            def readout(index: int, projections: torch.Tensor) -> None:
                collected[index] = projections
        context = (self.steerer.rows().hooked(tables, rows, readout) if self.steerer is not None else nullcontext())
        with context:
            out = self.model(input_ids=ids, attention_mask=attention, position_ids=positions, past_key_values=cache,
                             use_cache=True, **self.forward_kwargs)
        if out.past_key_values is not cache:
            raise BatchingError("its forward does not fill the cache it is given")
        self.last_readout = (torch.stack([collected[i] for i in sorted(collected)], dim=2).cpu().numpy()
                             if collected else None)
        return out.logits[:, -1].to(torch.float32, copy=True)  # as generate reads them

    # ------------------------------------------------------------------------------ rows
    def prefill(self, prompts: Sequence[Sequence[int]], steerings: Sequence[RowSteer],
                reads: Sequence[bool] | None = None) -> torch.Tensor:
        """Run joining prompts (as their own left-padded batch) and append them as the last rows.

        Returns their next-token logits ``[len(prompts), vocab]`` (float32, raw); with ``reads``, the rows that
        asked find their prompts' projections in ``last_readout`` (left-padded like the prompts)."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            mask[i, width - len(prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).masked_fill_(mask == 0, 1)  # as generate numbers a left-padded row
        cache = _cache_class()()
        joining = [self._steering(s) for s in steerings]
        reads = list(reads) if reads is not None else [False] * len(joining)
        logits = self._forward(ids, mask, positions, cache, self._tables_for(joining), "prompt", reads, mask)
        self._merge(cache, mask, joining, reads)
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``[rows]``, in row order); the next-token logits ``[rows, vocab]``."""
        ones = torch.ones((len(self), 1), dtype=torch.long, device=self.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        logits = self._forward(tokens.to(self.device).view(-1, 1), None, self.lengths.view(-1, 1), self.cache,
                               self.tables, "generated", self.reads, self.mask)
        self.lengths = self.lengths + 1
        return logits

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (indices, in this order); drop the leading columns no kept row uses."""
        rows = list(rows)
        if rows == list(range(len(self))):
            return
        if not rows:
            self.clear()
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        lengths = self.lengths.index_select(0, index)
        lead = self.width - int(lengths.max())
        self.cache = _cache_of([(k.index_select(0, index)[:, :, lead:], v.index_select(0, index)[:, :, lead:])
                                for k, v in _layers(self.cache)])
        self.mask = self.mask.index_select(0, index)[:, lead:]
        self.lengths = lengths
        self.steerings = [self.steerings[i] for i in rows]
        self.reads = [self.reads[i] for i in rows]
        self.tables = self._tables_for(self.steerings)

    def _merge(self, cache, mask: torch.Tensor, steerings: list[Steering | None], reads: list[bool]) -> None:
        lengths = mask.sum(-1)
        if self.cache is None:
            self.cache, self.mask, self.lengths = cache, mask, lengths
        else:
            width = max(self.width, int(mask.shape[1]))
            self.cache = _cache_of([(torch.cat([_left_pad(k0, width), _left_pad(k1, width)]),
                                     torch.cat([_left_pad(v0, width), _left_pad(v1, width)]))
                                    for (k0, v0), (k1, v1) in zip(_layers(self.cache), _layers(cache), strict=True)])
            self.mask = torch.cat([F.pad(self.mask, (width - self.width, 0)), F.pad(mask, (width - mask.shape[1], 0))])
            self.lengths = torch.cat([self.lengths, lengths])
        for keys, values in _layers(self.cache):
            if keys.shape[-2] != self.width or values.shape[-2] != self.width or keys.shape[0] != self.mask.shape[0]:
                raise BatchingError(f"its cache holds {tuple(keys.shape)} keys for a batch of {tuple(self.mask.shape)}")
        self.steerings += steerings
        self.reads += reads
        self.tables = self._tables_for(self.steerings)


def _run(model: torch.nn.Module, pad_id: int, prompts: list[list[int]], feed: list[int]) -> list[torch.Tensor]:
    """The last prompt's row (each prompt joining on its own), fed ``feed``, the other rows leaving before the last
    token: its logits after the prompt and after each token."""
    batch = RowBatch(model, None, pad_id)
    got = [batch.prefill([p], [None])[0] for p in prompts][-1:]
    for i, token in enumerate(feed):
        if i == len(feed) - 1 and len(batch) > 1:
            batch.keep([len(batch) - 1])
        got.append(batch.step(torch.tensor([token] * len(batch), device=batch.device))[-1])
    return got


def _gap(want: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    """Largest |log-probability| difference over each step's 20 likeliest tokens (of ``want``)."""
    gaps = []
    for a, b in zip(want, got, strict=True):
        top = a.topk(min(20, a.shape[-1])).indices
        gaps.append(float((torch.log_softmax(a, -1)[top] - torch.log_softmax(b, -1)[top]).abs().max()))
    return max(gaps)


def batching_problem(model: torch.nn.Module, pad_id: int) -> str | None:
    """Why ``model`` cannot run rows of different lengths in one ``RowBatch`` (None: it can).

    A short row runs alone, beside a row of its length (no padding: the rounding noise of another batch
    shape), and beside a longer row (left-padded, then the longer row leaves and the columns it alone used are
    dropped). Padded must agree with alone as well as unpadded does (``PROBE_TOLERANCE``, or 8x the unpadded
    difference if that is larger): a model that ignores the padding mask or ``position_ids`` differs by whole
    units of log-probability.
    """
    vocab = int(model.get_input_embeddings().num_embeddings)
    generator = torch.Generator().manual_seed(0)
    short, same, long = (torch.randint(0, vocab, (n,), generator=generator).tolist() for n in (5, 5, 11))
    feed = [(7 * i + 3) % vocab for i in range(4)]
    try:
        with torch.inference_mode():
            alone = _run(model, pad_id, [short], feed)
            unpadded = _run(model, pad_id, [same, short], feed)
            padded = _run(model, pad_id, [long, short], feed)
    except BatchingError as exc:
        return str(exc)
    except Exception as exc:  # a forward that refuses these inputs: say what it said
        return f"its forward fails on a padded batch ({type(exc).__name__}: {exc})"
    dtype = next(model.parameters()).dtype
    tolerance = max(PROBE_TOLERANCE[dtype == torch.float32], 8 * _gap(alone, unpadded))
    gap = _gap(alone, padded)
    if not gap <= tolerance:
        return (f"a row padded beside a longer one gets other log-probabilities than alone (max difference {gap:.3g}, "
                f"tolerance {tolerance:.3g}); the model does not honour the padding mask or per-row positions")
    return None
