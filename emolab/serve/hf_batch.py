"""Continuous batching for the HF backend: one thread, one ``RowBatch``, requests joining and leaving every step.

The loop, on its own thread: drop rows whose client left; admit waiting requests (first come, first
served) while the batch has room; if any were admitted, run their prompts (prefill) and choose each one's
first token; otherwise take one decoding step for every running row. After each forward, every row's
token is chosen by its own ``TokenChooser`` (its temperature, top_p, seed), reported through its own
``TextWatcher`` (stop strings, streaming deltas, logprobs), and the rows that are done (end of sequence,
stop string, ``max_tokens``, cancelled) leave the batch at once. Each row carries its own steering
(``RowBatch``: a per-row delta in the same hook as a request alone).

Memory is bounded by two limits: at most ``max_batch`` rows, and ``rows x longest (prompt + max_tokens)``
at most ``max_batch_tokens`` key/value positions (the cache is left-padded to its longest row, so this is
what it can grow to). A request that does not fit waits in the queue (the HTTP layer answers 429 past
``--max-concurrent-queue``); a request alone always runs, whatever its length (the context bounds it).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from emolab.core.models import pad_token_id
from emolab.core.readout import readout_scale, readout_summary
from emolab.serve.generation import Delta, GenerationParams, GenerationResult, TextWatcher, finish
from emolab.serve.logprobs import TokenRenderer
from emolab.steer import HFSteerer, stop_token_ids
from emolab.steer.rows import RowBatch
from emolab.steer.sampling import TokenChooser

__all__ = ["BatchScheduler", "BatchStats"]

logger = logging.getLogger("emolab.hf")


@dataclass
class BatchStats:
    """What the scheduler has done so far (tests and benchmarks read it)."""

    prefills: int = 0  # forwards over joining prompts
    steps: int = 0  # decoding forwards
    peak_rows: int = 0  # most rows in one forward
    peak_slots: int = 0  # most key/value positions the cache held (rows x width, read from its tensors)
    joined_running: int = 0  # requests that joined a batch with rows already running
    failures: list[str] = field(default_factory=list)


@dataclass
class _Row:
    params: GenerationParams
    watcher: TextWatcher
    future: Future
    cancel: threading.Event
    chooser: TokenChooser | None = None
    generated: list[int] = field(default_factory=list)
    read_prompt: np.ndarray | None = None  # readout: the prompt's projections [positions, layers, n]
    read_generated: list[np.ndarray] = field(default_factory=list)  # ... and each fed-back token's [layers, n]

    @property
    def reserved(self) -> int:
        """The most positions this row can hold: its prompt and every token it may generate."""
        return len(self.params.prompt_ids) + self.params.max_tokens


class BatchScheduler:
    """Runs every admitted request of an HF backend in one continuously batched loop on one thread."""

    def __init__(self, model, tokenizer, steerer: HFSteerer | None, renderer: TokenRenderer, *, max_batch: int,
                 max_batch_tokens: int) -> None:
        self.model, self.tokenizer, self.renderer = model, tokenizer, renderer
        self.max_batch, self.max_batch_tokens = max_batch, max_batch_tokens
        self.batch = RowBatch(model, steerer, pad_token_id(tokenizer))
        self.steerer = steerer
        self.stops = stop_token_ids(model, tokenizer)
        self.stats = BatchStats()
        self.waiting: deque[_Row] = deque()
        self.running: list[_Row] = []  # in the batch's row order
        self.wake = threading.Condition()
        self.closed = False
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------- callers
    def submit(self, params: GenerationParams, emit: Callable[[Delta], None],
               cancel: threading.Event) -> Future[GenerationResult]:
        """Queue one generation; its future resolves on the scheduler thread (any thread may call this)."""
        wanted = params.logprobs is not None
        watcher = TextWatcher(self.tokenizer, len(params.prompt_ids), params.stop, emit, cancel,
                              self.renderer if wanted else None, params.logprobs or 0)
        row = _Row(params, watcher, Future(), cancel)
        with self.wake:
            if self.closed:
                raise RuntimeError("the HF backend is shutting down")
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="emolab-batch", daemon=True)
                self.thread.start()
            self.waiting.append(row)
            self.wake.notify()
        return row.future

    def shutdown(self) -> None:
        with self.wake:
            self.closed = True
            for row in [*self.waiting, *self.running]:
                row.cancel.set()
            self.wake.notify()

    # ------------------------------------------------------------------------------- the loop
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self.wake:
                    while not self.closed and not self.waiting and not self.running:
                        self.wake.wait()
                    if self.closed:
                        break
                try:
                    self._iteration()
                except Exception as exc:  # a failed forward fails the requests in it; the loop serves on
                    logger.exception("batched generation failed; failing its %d requests", len(self.running))
                    self.stats.failures.append(f"{type(exc).__name__}: {exc}")
                    for row in self.running:
                        if not row.future.done():
                            row.future.set_exception(exc)
                    self.running = []
                    self.batch.clear()
        for row in [*self.waiting, *self.running]:  # closed: whatever is left ends as aborted
            self._end(row, cancelled=True)
        self.waiting.clear()
        self.running = []
        self.batch.clear()

    def _iteration(self) -> None:
        self._leave([i for i, row in enumerate(self.running) if row.cancel.is_set()], cancelled=True)
        joining = self._admit()
        if joining:
            if self.running:
                self.stats.joined_running += len(joining)
            for row in joining:
                row.chooser = TokenChooser(self.model.generation_config, temperature=row.params.temperature,
                                           top_p=row.params.top_p, seed=row.params.seed, device=self.batch.device)
            self.running += joining  # before the forward: should it fail, these fail with the rest
            logits = self.batch.prefill([r.params.prompt_ids for r in joining],
                                        [r.params.row_steering() for r in joining],
                                        [r.params.readout is not None for r in joining])
            self._read(joining, prompt=True)
            self.stats.prefills += 1
            self._note_size()
            self._advance(len(self.running) - len(joining), logits)
        elif self.running:
            tokens = torch.tensor([row.generated[-1] for row in self.running], dtype=torch.long)
            logits = self.batch.step(tokens)
            self._read(self.running, prompt=False)
            self.stats.steps += 1
            self._note_size()
            self._advance(0, logits)

    def _read(self, rows: list[_Row], prompt: bool) -> None:
        """Keep the last forward's projections of the rows that asked for a readout (row order = forward order)."""
        found = self.batch.last_readout
        if found is None:
            return
        for i, row in enumerate(rows):
            if row.params.readout is None:
                continue
            n = len(self.steerer.bundle.emotions)  # the emotions only, not the derived directions
            if prompt:  # left-padded: the prompt's positions are the last ones
                row.read_prompt = found[i, found.shape[1] - len(row.params.prompt_ids):, :, :n]
            else:
                row.read_generated.append(found[i, 0, :, :n])

    def _readout(self, row: _Row) -> dict | None:
        if row.params.readout is None or self.steerer is None or row.read_prompt is None:
            return None
        bundle = self.steerer.bundle
        generated = np.stack(row.read_generated) if row.read_generated else np.zeros((0, *row.read_prompt.shape[1:]))
        return readout_summary(list(bundle.emotions), readout_scale(bundle), bundle.steering_mask(),
                               prompt=row.read_prompt[1:], generated=generated,
                               per_token=row.params.readout == "per_token")

    def _admit(self) -> list[_Row]:
        """Waiting requests that fit now, first come first served (a cancelled one ends here, unrun)."""
        joining: list[_Row] = []
        with self.wake:
            while self.waiting:
                row = self.waiting[0]
                if row.cancel.is_set():
                    self.waiting.popleft()
                    self._end(row, cancelled=True)
                    continue
                rows = len(self.running) + len(joining)
                if rows >= self.max_batch:
                    break
                widest = max([r.reserved for r in (*self.running, *joining)] + [row.reserved])
                if rows and (rows + 1) * widest > self.max_batch_tokens:
                    break
                joining.append(self.waiting.popleft())
        return joining

    def _advance(self, first: int, logits: torch.Tensor) -> None:
        """Choose the tokens of rows ``first..`` from their logits; report them; let finished rows leave."""
        rows = self.running[first:]
        tokens = logits.argmax(-1)
        for i, row in enumerate(rows):
            if not row.chooser.plain_greedy:
                tokens[i] = row.chooser.choose(logits[i], row.params.prompt_ids + row.generated)
        done = []
        for i, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            row.generated.append(token)
            stopped = row.watcher.observe(row.generated, logits[i] if row.watcher.renderer is not None else None)
            eos = token in self.stops and not row.params.ignore_eos
            if stopped or eos or len(row.generated) >= row.params.max_tokens:
                done.append(first + i)
        self._leave(done, cancelled=False)

    def _leave(self, indices: list[int], cancelled: bool) -> None:
        if not indices:
            return
        gone = set(indices)
        for i in indices:
            self._end(self.running[i], cancelled=cancelled or self.running[i].cancel.is_set())
        kept = [i for i in range(len(self.running)) if i not in gone]
        self.batch.keep(kept)
        self.running = [self.running[i] for i in kept]

    def _end(self, row: _Row, cancelled: bool) -> None:
        generated = row.generated
        if generated and generated[-1] in self.stops and not row.params.ignore_eos:
            generated = generated[:-1]  # the end-of-sequence token is counted, not returned
        if row.future.done():
            return
        try:
            row.future.set_result(finish(row.params, row.watcher, generated, cancelled, self._readout(row)))
        except Exception as exc:  # e.g. the client's emit failed: this request fails, not the loop
            row.future.set_exception(exc)

    def _note_size(self) -> None:
        self.stats.peak_rows = max(self.stats.peak_rows, len(self.batch))
        self.stats.peak_slots = max(self.stats.peak_slots, self.batch.slots())
