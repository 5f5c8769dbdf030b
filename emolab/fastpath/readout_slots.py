"""The readout inside vLLM's batches: static buffers that every step's projections are added into.

``sums``   ``[layers, 1 + 2 x max_requests, n]`` float32: a reading request owns two slots, its prompt's and its
           generated tokens' sums of projections (slot 0 takes every token nobody reads: it is never read).
``tokens`` ``[layers, 1 + token_slots, n]`` float32: a ``per_token`` request owns one slot per token it may
           generate (a range given out first-fit, kept per request slot in ``_range_start``/``_range_len``;
           when none is free it reads means only, and says so).
``slot_of_token`` / ``token_slot_of_token`` ``[max_tokens]`` int64: each position of the flat batch's slot.

Each hooked block adds ``before`` (the projections before steering, ``core.steering_ops.steering_delta``)
into both with ``index_add_``: static shapes, in place, graph-safe. The host decides the slots before each
forward (``layout``, from every scheduled token's position: position 0 is left out as an attention sink, a
position below the prompt's length is the prompt, a position read before is not read again, so a request
recomputed after preemption counts each token once) and counts the tokens, in a few array operations per
step (per-slot numpy state: 0.1 ms for 256 reading requests on a 2-core CI machine, where a loop over them
took 2.2 ms). When a reading request finishes, its slots are copied to the host (asynchronously on a GPU;
a thread waits for the copy and writes this worker's part for the API server,
``emolab.fastpath.readout_store``) and freed at once: the copy is queued on the stream before anything a
later owner does to the slot (its zeroing, the next forward), so a slot never waits for the thread and
``max_requests`` slots always serve ``max_requests`` requests in flight.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from emolab.fastpath.readout_store import choice_index, choice_key, parse_xarg, write_part

__all__ = ["NO_SLOT", "ReadoutBuffers"]

logger = logging.getLogger("emolab.vllm")

NO_SLOT = ("no readout slot was free for this request (more reading requests in flight than the engine's "
           "max_num_seqs); it ran unread")


@dataclass
class _Reading:
    key: str
    kind: str
    slot: int  # prompt sum at 2*slot+1, generated at 2*slot+2
    counts: list[int] = field(default_factory=lambda: [0, 0])  # (prompt, generated) tokens read, set at finish
    note: str | None = None


class ReadoutBuffers:
    def __init__(self, layer_ids: list[int], n: int, *, max_tokens: int, max_requests: int, token_slots: int,
                 device: torch.device, folder: Path | None) -> None:
        layers = len(layer_ids)
        self.layer_ids, self.folder, self.device, self.n = list(layer_ids), folder, device, n
        self.sums = torch.zeros(layers, 1 + 2 * max_requests, n, dtype=torch.float32, device=device)
        self.tokens = torch.zeros(layers, 1 + token_slots, n, dtype=torch.float32, device=device)
        self.slot_of_token = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self.token_slot_of_token = torch.zeros(max_tokens, dtype=torch.int64, device=device)
        self._free_slots = list(range(max_requests - 1, -1, -1))
        # What ``layout`` updates every step, per slot (numpy, so a step of many reading requests is a few
        # array operations, not a Python loop): positions below ``_upto`` were read (position 0, a sink,
        # never is), the prompt's length, (prompt, generated) tokens read, the per-token range (length 0: none).
        self._upto = np.ones(max_requests, dtype=np.int64)
        self._prompt_len = np.zeros(max_requests, dtype=np.int64)
        self._counts = np.zeros((max_requests, 2), dtype=np.int64)
        self._range_start = np.zeros(max_requests, dtype=np.int64)
        self._range_len = np.zeros(max_requests, dtype=np.int64)
        self._free_ranges: list[tuple[int, int]] = [(1, token_slots)]
        self._reading: dict[str, _Reading] = {}
        self._dirty = 0
        self._jobs: queue.SimpleQueue | None = None
        self.published_total = 0

    @property
    def active(self) -> bool:
        return bool(self._reading) or self._dirty > 0

    # ------------------------------------------------------------------ inside the forward pass
    def accumulate(self, index: int, before: torch.Tensor) -> None:
        n = before.shape[0]
        self.sums[index].index_add_(0, self.slot_of_token[:n], before)
        self.tokens[index].index_add_(0, self.token_slot_of_token[:n], before)

    # ------------------------------------------------------------------ request bookkeeping
    def add(self, req_id: str, xarg: object, max_tokens: int | None) -> None:
        found = parse_xarg(xarg)
        if found is None:
            if xarg is not None:
                logger.error("request %s: malformed readout entry %r; no readout", req_id, xarg)
            return
        key, kind, choices = found
        if choices > 1:  # one of the request's n choices: each is read and answered on its own
            index = choice_index(req_id, choices)
            if index is None:
                logger.error("request %s: not one of %d choices by its id; no readout", req_id, choices)
                return
            key = choice_key(key, index)
        if not self._free_slots or self.folder is None:
            logger.error("request %s: no readout slot free (or no metrics folder); no readout", req_id)
            if self.folder is not None:  # tell the waiting API server now, not after its time-out
                self._put(key, {"layers": self.layer_ids, "unavailable": NO_SLOT})
            return
        slot = self._free_slots.pop()
        self.sums[:, 2 * slot + 1:2 * slot + 3].zero_()
        reading = _Reading(key, kind, slot)
        self._upto[slot], self._prompt_len[slot], self._counts[slot] = 1, 0, 0
        self._range_start[slot] = self._range_len[slot] = 0
        if kind == "per_token":
            span = self._take_range(int(max_tokens or 0))
            if span is None:
                reading.note = "per-token readout buffer full: means only"
            else:
                start, length = span
                self.tokens[:, start:start + length].zero_()
                self._range_start[slot], self._range_len[slot] = start, length
        self._reading[req_id] = reading

    def layout(self, req_ids: list[str], starts: np.ndarray, counts: np.ndarray, prompt_lens: np.ndarray,
               positions: np.ndarray) -> None:
        """Each scheduled position's slots (``positions``: every token's position, ``starts``/``counts``: each
        request's first token in the flat batch and how many it has)."""
        counts = np.asarray(counts, dtype=np.int64)
        total = int(counts.sum())
        if not self._reading and not self._dirty:
            return
        slots = np.zeros(total, dtype=np.int64)
        token_slots = np.zeros(total, dtype=np.int64)
        get = self._reading.get
        slot_of = np.fromiter(((-1 if (r := get(q)) is None else r.slot) for q in req_ids), np.int64, len(req_ids))
        mine = np.flatnonzero((slot_of >= 0) & (counts > 0))
        if mine.size:
            count = counts[mine]
            first = np.cumsum(count) - count  # each reading request's first token among theirs
            owner = np.repeat(np.arange(mine.size), count)
            flat = np.repeat(np.asarray(starts, dtype=np.int64)[mine] - first, count) + np.arange(int(count.sum()))
            pos = np.asarray(positions, dtype=np.int64)[flat]
            slot = slot_of[mine]
            self._prompt_len[slot] = np.asarray(prompt_lens, dtype=np.int64)[mine]
            at = slot[owner]  # each of their tokens' slot
            fresh = pos >= self._upto[at]
            generated = fresh & (pos >= self._prompt_len[at])
            in_prompt = fresh & ~generated
            slots[flat] = np.where(in_prompt, 2 * at + 1, np.where(generated, 2 * at + 2, 0))
            index = pos - self._prompt_len[at]
            ok = generated & (index < self._range_len[at])
            token_slots[flat[ok]] = self._range_start[at[ok]] + index[ok]
            self._counts[slot, 0] += np.bincount(owner, weights=in_prompt, minlength=mine.size).astype(np.int64)
            self._counts[slot, 1] += np.bincount(owner, weights=generated, minlength=mine.size).astype(np.int64)
            self._upto[slot] = np.maximum(self._upto[slot], np.maximum.reduceat(pos, first) + 1)
        extent = max(total, self._dirty)
        for target, values in ((self.slot_of_token, slots), (self.token_slot_of_token, token_slots)):
            host = np.zeros(extent, dtype=np.int64)
            host[:total] = values
            source = torch.from_numpy(host)
            target[:extent].copy_(source.pin_memory() if target.is_cuda else source, non_blocking=True)
        self._dirty = total if (slots.any() or token_slots.any()) else 0

    def finish(self, req_id: str) -> None:
        reading = self._reading.pop(req_id, None)
        if reading is None:
            return
        s = reading.slot
        reading.counts = [int(c) for c in self._counts[s]]  # the slot is reused before the part is written
        sums = self.sums[:, 2 * s + 1:2 * s + 3]
        per_token = None
        if self._range_len[s]:
            start = int(self._range_start[s])
            per_token = self.tokens[:, start:start + reading.counts[1]]
        if not self.sums.is_cuda:
            self._write(reading, sums.clone().numpy(), None if per_token is None else per_token.clone().numpy())
            self._release(reading)
            return
        host_sums = torch.empty(sums.shape, dtype=torch.float32, pin_memory=True)
        host_sums.copy_(sums, non_blocking=True)
        host_tokens = None
        if per_token is not None:
            host_tokens = torch.empty(per_token.shape, dtype=torch.float32, pin_memory=True)
            host_tokens.copy_(per_token, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._publisher().put((event, reading, host_sums, host_tokens))
        self._release(reading)  # stream order: the copy above runs before any later use of these slots

    # ------------------------------------------------------------------ publishing
    def _write(self, reading: _Reading, sums: np.ndarray, per_token: np.ndarray | None) -> None:
        part = {"layers": self.layer_ids, "prompt_sum": sums[:, 0].tolist(), "generated_sum": sums[:, 1].tolist(),
                "prompt_count": reading.counts[0], "generated_count": reading.counts[1],
                "per_token": None if per_token is None else np.transpose(per_token, (1, 0, 2)).tolist(),
                "note": reading.note}
        if self._put(reading.key, part):
            self.published_total += 1

    def _put(self, key: str, part: dict) -> bool:
        try:
            write_part(self.folder, key, part)
            return True
        except OSError as exc:
            logger.error("readout %s: cannot write its part (%s)", key, exc)
            return False

    def _publisher(self) -> queue.SimpleQueue:
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            threading.Thread(target=self._publish_loop, name="emolab-readout", daemon=True).start()
        return self._jobs

    def _publish_loop(self) -> None:
        while True:
            event, reading, host_sums, host_tokens = self._jobs.get()
            event.synchronize()
            self._write(reading, host_sums.numpy(), None if host_tokens is None else host_tokens.numpy())

    def _release(self, reading: _Reading) -> None:
        s = reading.slot
        self._free_slots.append(s)
        if self._range_len[s]:
            self._give_range((int(self._range_start[s]), int(self._range_len[s])))

    def _take_range(self, length: int) -> tuple[int, int] | None:
        if length <= 0:
            return None
        for i, (start, size) in enumerate(self._free_ranges):
            if size >= length:
                self._free_ranges[i] = (start + length, size - length)
                if size == length:
                    del self._free_ranges[i]
                return start, length
        return None

    def _give_range(self, span: tuple[int, int]) -> None:
        ranges = sorted([*self._free_ranges, span])
        merged: list[tuple[int, int]] = []
        for start, size in ranges:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + size)
            else:
                merged.append((start, size))
        self._free_ranges = merged
