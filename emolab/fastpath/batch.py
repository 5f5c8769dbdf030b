"""Per-request steering inside vLLM's batches: static buffers, a slot table, layer hooks.

Nothing here depends on a vLLM version: the runner adapters (``emolab.fastpath.adapters``) feed it the
batch layout before each forward. Design:

* ``basis``      ``[n_layers, n_emotions, hidden]`` in the model's dtype, read-only.
* ``rows``       ``[n_rows + 1, n_emotions]`` coefficient rows; row 0 is all zeros (unsteered).
  Requests with identical steering share a reference-counted row.
* ``token_rows`` ``[max_tokens]`` int64: the row of every token slot of the flattened batch.
  Padding and unsteered tokens point at row 0, so they get an exact zero.

Each hooked block adds ``rows[token_rows[:n]] @ basis[l]`` to its output: a gather and a small matmul
per layer, no Python loop over tokens, no host-device sync. Where the output sits in what the block
returns is its layout (``emolab.fastpath.adapters.blocks``: ``pair``, ``tensor`` or ``first``), fixed
when the hook is made, so a call does no more than the arithmetic. The buffers are allocated before
torch.compile and CUDA-graph capture and only ever written in place, so graphs stay valid.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from emolab.core.bundle import EmotionBundle
from emolab.core.steering import SteeringError, SteeringLimits, coefficients, parse_steering, steering_field
from emolab.fastpath.metrics import WorkerCounters

__all__ = ["BatchSteering"]

logger = logging.getLogger("emolab.vllm")


class BatchSteering:
    def __init__(
        self,
        layers: Sequence[torch.nn.Module],
        bundle: EmotionBundle,
        basis: np.ndarray,
        *,
        max_tokens: int,
        max_rows: int,
        device: torch.device,
        dtype: torch.dtype,
        layouts: Sequence[str],
        limits: SteeringLimits | None = None,
    ) -> None:
        self.emotions = list(bundle.emotions)
        self.limits = limits or SteeringLimits()
        self.device = device
        self.basis = torch.as_tensor(basis, dtype=dtype, device=device).contiguous()
        self.rows = torch.zeros(max_rows + 1, len(self.emotions), dtype=dtype, device=device)
        self.token_rows = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self._free_rows = list(range(max_rows, 0, -1))
        self._row_of_key: dict[bytes, int] = {}
        self._key_of_row: dict[int, bytes] = {}
        self._refcount: dict[int, int] = {}
        self._row_of_req: dict[str, int] = {}
        self._dirty_tokens = 0  # token_rows[:_dirty_tokens] may be non-zero
        self._handles = [layer.register_forward_hook(self._make_hook(i, layout))
                         for i, (layer, layout) in enumerate(zip(layers, layouts, strict=True))]
        # Operators read these on /metrics (emolab.fastpath.metrics); published after each update.
        self.steered_total = 0
        self.invalid_total = 0
        self.exhausted_total = 0
        self.counters = WorkerCounters()
        self._publish()

    # ------------------------------------------------------------------ inside the forward pass
    def _make_hook(self, index: int, layout: str):
        def pair(module, args, output):
            hidden_states, residual = output
            n = residual.shape[0]
            delta = self.rows[self.token_rows[:n]] @ self.basis[index]
            # Block output = hidden_states + residual; add to exactly one of them.
            return hidden_states, residual + delta

        def tensor(module, args, output):
            # [tokens, hidden], or [1, tokens, hidden] from transformers' own blocks: the delta broadcasts.
            n = output.shape[-2]
            return output + self.rows[self.token_rows[:n]] @ self.basis[index]

        def first(module, args, output):
            n = output[0].shape[-2]
            return (output[0] + self.rows[self.token_rows[:n]] @ self.basis[index], *output[1:])

        hooks = {"pair": pair, "tensor": tensor, "first": first}
        if layout not in hooks:
            raise ValueError(f"unknown block layout {layout!r}; expected one of {sorted(hooks)}")
        return hooks[layout]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    # ------------------------------------------------------------------ request bookkeeping
    def add_request(self, req_id: str, extra_args: dict | None) -> None:
        """Register a request the scheduler sent for the first time (or re-sent after preemption)."""
        self.finish_request(req_id)
        raw = None
        try:
            found = steering_field(extra_args or {})
            raw, param = found if found else (None, "steering")
            pairs = parse_steering(raw, self.emotions, self.limits, param=param)
        except SteeringError as exc:
            # The API server validates before scheduling; this only catches direct engine use.
            logger.error("request %s: invalid steering %r (%s); running it unsteered", req_id, raw, exc)
            self.invalid_total += 1
            return
        coeffs = coefficients(pairs, len(self.emotions))
        if not np.any(coeffs):
            return
        key = coeffs.tobytes()
        row = self._row_of_key.get(key)
        if row is None:
            if not self._free_rows:
                logger.error("request %s: all %d steering rows in use; running it unsteered", req_id, len(self.rows) - 1)
                self.exhausted_total += 1
                return
            row = self._free_rows.pop()
            self._row_of_key[key] = row
            self._key_of_row[row] = key
            self._refcount[row] = 0
            source = torch.from_numpy(coeffs).to(self.rows.dtype)
            self.rows[row].copy_(source.pin_memory() if self.rows.is_cuda else source, non_blocking=True)
        self._refcount[row] += 1
        self._row_of_req[req_id] = row
        self.steered_total += 1

    def finish_request(self, req_id: str) -> None:
        row = self._row_of_req.pop(req_id, None)
        if row is None:
            return
        self._refcount[row] -= 1
        if self._refcount[row] == 0:
            del self._refcount[row]
            del self._row_of_key[self._key_of_row.pop(row)]
            self._free_rows.append(row)

    def update(self, new_requests: Iterable[tuple[str, dict | None]], finished: Iterable[str]) -> None:
        changed = False
        for req_id in finished:
            self.finish_request(req_id)
            changed = True
        for req_id, extra_args in new_requests:
            self.add_request(req_id, extra_args)
            changed = True
        if changed:
            self._publish()

    def _publish(self) -> None:
        self.counters.publish(
            active_rows=len(self._refcount), active_steered_requests=len(self._row_of_req),
            steered_requests_total=self.steered_total, invalid_steering_total=self.invalid_total,
            rows_exhausted_total=self.exhausted_total,
        )

    def set_layout(self, req_ids: Sequence[str], num_scheduled_tokens: np.ndarray) -> None:
        """Point every token of the coming forward at its request's row (batch order as laid out)."""
        if not self._row_of_req and not self._dirty_tokens:
            return  # nothing steered anywhere: token_rows is already all zeros
        get = self._row_of_req.get
        req_rows = np.fromiter((get(r, 0) for r in req_ids), dtype=np.int64, count=len(req_ids))
        if not req_rows.any() and not self._dirty_tokens:
            return
        tokens = np.repeat(req_rows, num_scheduled_tokens)
        extent = max(len(tokens), self._dirty_tokens)
        if extent > self.token_rows.shape[0]:
            raise RuntimeError(f"batch of {extent} tokens exceeds the steering buffer ({self.token_rows.shape[0]})")
        host = np.zeros(extent, dtype=np.int64)
        host[: len(tokens)] = tokens
        source = torch.from_numpy(host)
        if self.token_rows.is_cuda:
            # A fresh pinned block from torch's caching host allocator: the copy is truly async and
            # the block is not reused before the copy has run (the allocator records the stream).
            source = source.pin_memory()
        self.token_rows[:extent].copy_(source, non_blocking=True)
        self._dirty_tokens = len(tokens) if req_rows.any() else 0

    @property
    def active_requests(self) -> int:
        return len(self._row_of_req)
