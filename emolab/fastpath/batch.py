"""Per-request steering inside vLLM's batches: static buffers, a row table, layer hooks.

Nothing here depends on a vLLM version: the runner adapters (``emolab.fastpath.adapters``) feed it the
batch layout before each forward. Design:

* ``basis`` / ``units`` / ``cross`` ``[layers, n, hidden]``, ``[layers, n, n]`` float32: the steering basis,
  its unit directions and ``basis @ units^T`` (``core.steering_ops.ControlTables``), read-only.
* ``add``    ``[rows + 1, n]`` float32: each row's alphas to add; row 0 is all zeros (the plain model).
* ``solve`` / ``target`` ``[rows + 1, layers, n, n]`` / ``[rows + 1, layers, n]``: each row's ablations and
  clamps (zero for a row that holds nothing). Requests with one ``Steering`` share a reference-counted row.
* ``token_rows`` ``[max_tokens]`` int64: the row of every position of the flattened batch. Padding,
  unsteered positions and positions outside a request's scope point at row 0, so they get an exact zero.

Each hooked block runs ``core.steering_ops.steering_delta`` on its output (the one operator the HF backend
runs too) and adds the result where the block keeps its output (its layout, ``adapters.blocks``: ``pair``,
``tensor`` or ``first``, fixed when the hook is made); the projections before steering go into the readout
buffers (``emolab.fastpath.readout_slots``). Gathers, products over the n directions (``steering_delta``'s
fused form: torch.compile makes them one reduction and elementwise passes) and two ``index_add_`` per layer,
no Python loop over tokens, no host-device sync. The buffers are allocated before torch.compile and
CUDA-graph capture and only ever written in place, so graphs stay valid.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from emolab.core.bundle import EmotionBundle
from emolab.core.steering import SCOPES, Steering, SteeringError, SteeringLimits
from emolab.core.steering_ops import ControlTables, steering_delta
from emolab.fastpath.metrics import WorkerCounters
from emolab.fastpath.readout_slots import ReadoutBuffers
from emolab.fastpath.readout_store import READOUT_XARG

__all__ = ["BatchSteering", "NewRequest"]

logger = logging.getLogger("emolab.vllm")
NewRequest = tuple[str, dict | None, int | None]  # (request id, extra_args, max_tokens)


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
        layer_ids: Sequence[int] | None = None,
        readout_folder: Path | None = None,
        readout_token_slots: int = 16384,
    ) -> None:
        self.emotions = bundle.steering_names  # ids as requests give them; the readout reads the emotions only
        n_read = len(bundle.emotions)
        self.limits = limits or SteeringLimits()
        self.device = device
        n, n_layers = len(self.emotions), len(layers)
        self.tables = ControlTables.of(basis)
        f32 = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device).contiguous()  # noqa: E731
        self.basis, self.units, self.cross = f32(self.tables.basis), f32(self.tables.units), f32(self.tables.cross)
        self.add = torch.zeros(max_rows + 1, n, dtype=torch.float32, device=device)
        self.solve = torch.zeros(max_rows + 1, n_layers, n, n, dtype=torch.float32, device=device)
        self.target = torch.zeros(max_rows + 1, n_layers, n, dtype=torch.float32, device=device)
        self.token_rows = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self.readout = ReadoutBuffers(list(layer_ids if layer_ids is not None else range(n_layers)), n_read,
                                      max_tokens=max_tokens, max_requests=max(1, max_rows // 2),
                                      token_slots=readout_token_slots, device=device, folder=readout_folder)
        self._free_rows = list(range(max_rows, 0, -1))
        self._row_of_key: dict[tuple, int] = {}  # (coefficients, modes, scope): one row per distinct steering
        self._key_of_row: dict[int, tuple] = {}
        self._refcount: dict[int, int] = {}
        self._row_of_req: dict[str, int] = {}
        self._scoped: dict[str, int] = {}  # requests steering one phase only: 1 prompt, 2 generated
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
    def _delta(self, index: int, output: torch.Tensor) -> torch.Tensor:
        flat = output.reshape(-1, output.shape[-1])  # [tokens, hidden] (transformers' blocks: [1, tokens, hidden])
        delta, before = steering_delta(flat, self.token_rows[:flat.shape[0]], self.add, self.basis[index],
                                       self.units[index], self.cross[index], self.solve[:, index], self.target[:, index])
        self.readout.accumulate(index, before[:, :self.readout.n])
        return delta.to(output.dtype).view(output.shape)

    def _make_hook(self, index: int, layout: str):
        def pair(module, args, output):
            hidden_states, residual = output
            # Block output = hidden_states + residual: read and steer the sum, add to exactly one of them.
            return hidden_states, residual + self._delta(index, hidden_states + residual)

        def tensor(module, args, output):
            # [tokens, hidden], or [1, tokens, hidden] from transformers' own blocks.
            return output + self._delta(index, output)

        def first(module, args, output):
            return (output[0] + self._delta(index, output[0]), *output[1:])

        hooks = {"pair": pair, "tensor": tensor, "first": first}
        if layout not in hooks:
            raise ValueError(f"unknown block layout {layout!r}; expected one of {sorted(hooks)}")
        return hooks[layout]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    # ------------------------------------------------------------------ request bookkeeping
    def add_request(self, req_id: str, extra_args: dict | None, max_tokens: int | None = None) -> None:
        """Register a request the scheduler sent for the first time (or re-sent after preemption)."""
        self.finish_request(req_id)
        args = extra_args or {}
        self.readout.add(req_id, args.get(READOUT_XARG), max_tokens)
        try:
            steering = Steering.from_body({"vllm_xargs": {k: v for k, v in args.items() if k != READOUT_XARG}},
                                          self.emotions, self.limits)
            plan = steering.plan(len(self.emotions)) if steering else None
        except SteeringError as exc:
            # The API server validates before scheduling; this only catches direct engine use.
            logger.error("request %s: invalid steering %r (%s); running it unsteered", req_id, args, exc)
            self.invalid_total += 1
            return
        if plan is None:
            return
        key = (steering.coefficients(len(self.emotions)).tobytes(), steering.modes, steering.scope)
        row = self._row_of_key.get(key)
        if row is None:
            if not self._free_rows:
                logger.error("request %s: all %d steering rows in use; running it unsteered", req_id, len(self.add) - 1)
                self.exhausted_total += 1
                return
            row = self._free_rows.pop()
            self._row_of_key[key] = row
            self._key_of_row[row] = key
            self._refcount[row] = 0
            solve, target = self.tables.constraint_row(plan)
            for buffer, values in ((self.add, plan.add), (self.solve, solve), (self.target, target)):
                source = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
                buffer[row].copy_(source.pin_memory() if buffer.is_cuda else source, non_blocking=True)
        self._refcount[row] += 1
        self._row_of_req[req_id] = row
        if steering.scope != "all":
            self._scoped[req_id] = SCOPES.index(steering.scope)
        self.steered_total += 1

    def finish_request(self, req_id: str) -> None:
        self.readout.finish(req_id)
        self._scoped.pop(req_id, None)
        row = self._row_of_req.pop(req_id, None)
        if row is None:
            return
        self._refcount[row] -= 1
        if self._refcount[row] == 0:
            del self._refcount[row]
            del self._row_of_key[self._key_of_row.pop(row)]
            self._free_rows.append(row)

    def update(self, new_requests: Iterable[NewRequest | tuple[str, dict | None]], finished: Iterable[str]) -> None:
        changed = False
        for req_id in finished:
            self.finish_request(req_id)
            changed = True
        for item in new_requests:
            self.add_request(*item)
            changed = True
        if changed:
            self._publish()

    def _publish(self) -> None:
        self.counters.publish(
            active_rows=len(self._refcount), active_steered_requests=len(self._row_of_req),
            steered_requests_total=self.steered_total, invalid_steering_total=self.invalid_total,
            rows_exhausted_total=self.exhausted_total,
        )

    @property
    def needs_positions(self) -> bool:
        """Whether the coming layout needs every token's position (a scoped or a reading request)."""
        return bool(self._scoped) or self.readout.active

    def set_layout(self, req_ids: Sequence[str], num_scheduled_tokens: np.ndarray,
                   num_computed: np.ndarray | None = None, prompt_lens: np.ndarray | None = None) -> None:
        """Point every token of the coming forward at its request's row (batch order as laid out); with
        ``num_computed`` and ``prompt_lens`` (each request's tokens before this step and its prompt's length),
        only at positions in the request's scope, and every position at its readout slots."""
        reading = self.readout.active
        if not self._row_of_req and not self._dirty_tokens and not reading:
            return  # nothing steered or read anywhere: token_rows is already all zeros
        counts = np.asarray(num_scheduled_tokens, dtype=np.int64)
        get = self._row_of_req.get
        req_rows = np.fromiter((get(r, 0) for r in req_ids), dtype=np.int64, count=len(req_ids))
        positions = None
        if num_computed is not None and prompt_lens is not None and (self._scoped or reading):
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            positions = np.repeat(np.asarray(num_computed, np.int64) - starts, counts) + np.arange(int(counts.sum()))
            if reading:
                self.readout.layout(list(req_ids), starts, counts, np.asarray(prompt_lens), positions)
        if not req_rows.any() and not self._dirty_tokens:
            return
        tokens = np.repeat(req_rows, counts)
        if self._scoped and positions is not None:
            scope = np.repeat(np.fromiter((self._scoped.get(r, 0) for r in req_ids), np.int64, len(req_ids)), counts)
            prompt = positions < np.repeat(np.asarray(prompt_lens, np.int64), counts)
            tokens[((scope == 1) & ~prompt) | ((scope == 2) & prompt)] = 0
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
        self._dirty_tokens = len(tokens) if tokens.any() else 0

    @property
    def active_requests(self) -> int:
        return len(self._row_of_req)
