"""The Hugging Face serving backend: one transformers model, steering via ``HFSteerer``, off the event loop.

Generations run on a thread of their own so the event loop (``/health``, other clients, validation)
stays responsive while they are in flight. Two ways, one API:

* batched (``max_batch`` > 1, the default): ``emolab.serve.hf_batch.BatchScheduler`` runs every
  admitted request in one continuously batched loop, each row with its own steering, sampling and stops;
  requests join and leave between steps, and a row alone computes exactly what ``model.generate`` does;
* one at a time (``max_batch`` = 1, or a model that cannot be batched, said at start-up): each request
  is one ``model.generate`` call on a single worker thread, steering hooks added for its duration.

Both report through ``emolab.serve.generation.TextWatcher`` (streamed text, stop strings, logprobs) and
end through ``finish`` (finish reasons, token counts), so their replies have the same shape.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteriaList

from emolab.core.bundle import EmotionBundle
from emolab.core.models import chat_prompt_ids, decoder_layers, load_model, pad_token_id
from emolab.core.readout import readout_scale, readout_summary
from emolab.serve.contract import APIError
from emolab.serve.generation import Delta, GenerationParams, GenerationResult, TextWatcher, finish
from emolab.serve.hf_batch import BatchScheduler
from emolab.serve.logprobs import TokenRenderer
from emolab.serve.settings import DEFAULT_HF_MAX_BATCH as DEFAULT_MAX_BATCH
from emolab.serve.settings import DEFAULT_HF_MAX_BATCH_TOKENS as DEFAULT_MAX_BATCH_TOKENS
from emolab.steer import HFSteerer, generate
from emolab.steer.rows import batching_problem
from emolab.steer.sampling import unsupported_settings

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_MAX_BATCH_TOKENS", "DEFAULT_MAX_QUEUE", "Delta", "GenerationParams",
           "GenerationResult", "HFBackend"]

DEFAULT_MAX_TOKENS = 256  # when a request names none (CPU-friendly; vLLM would use the whole context)
DEFAULT_MAX_QUEUE = 64
DISCONNECT_POLL_S = 0.25  # how often a waiting non-streaming request checks that its client is still there
# apply_chat_template arguments a request may not override through chat_template_kwargs.
RESERVED_TEMPLATE_KWARGS = {"conversation", "tokenize", "return_tensors", "return_dict", "chat_template", "tokenizer_kwargs"}


class HFBackend:
    """A loaded model + tokenizer + steerer, and the worker (batched, or one at a time) that runs generations.

    ``max_batch`` requests generate together at most, holding at most ``max_batch_tokens`` key/value
    positions (``emolab.serve.hf_batch``); ``max_batch=1`` runs them one at a time through
    ``model.generate``, as does a model that cannot be batched (``batching_note`` says why).
    """

    def __init__(self, model, tokenizer, steerer: HFSteerer, *, max_model_len: int | None = None,
                 max_queue: int = DEFAULT_MAX_QUEUE, max_batch: int = DEFAULT_MAX_BATCH,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS) -> None:
        if max_batch < 1 or max_batch_tokens < 1 or max_queue < 1:
            raise ValueError("max_batch, max_batch_tokens and max_queue must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.steerer = steerer
        self.device = next(model.parameters()).device
        limit = getattr(model.config, "max_position_embeddings", None) or 4096
        self.max_model_len = min(max_model_len, limit) if max_model_len else limit
        self.max_queue = max_queue
        self.renderer = TokenRenderer(tokenizer)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emolab-generate")
        self.pending = 0  # requests waiting or running
        self.cancel_events: set[threading.Event] = set()
        self.scheduler: BatchScheduler | None = None
        self.batching_note = self._batching_problem() if max_batch > 1 else None
        if max_batch > 1 and self.batching_note is None:
            self.scheduler = BatchScheduler(model, tokenizer, steerer, self.renderer, max_batch=max_batch,
                                            max_batch_tokens=max_batch_tokens)

    def _batching_problem(self) -> str | None:
        """Why this model is served one request at a time although batching was asked for (None: it is not)."""
        unsupported = unsupported_settings(self.model.generation_config)
        if unsupported:
            return f"its generation config sets {', '.join(unsupported)}, which only model.generate applies"
        return batching_problem(self.model, pad_token_id(self.tokenizer))

    @classmethod
    def load(cls, model_name: str, bundle: EmotionBundle, *, dtype: str = "auto", device: str = "auto",
             alpha_scale: str | None = None, max_model_len: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
             max_batch: int = DEFAULT_MAX_BATCH, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
             load_format: str = "auto") -> HFBackend:
        """Load the model and cast the bundle once; refuses a bundle that does not fit the model.

        ``load_format="dummy"``: random weights of the model's shape (benchmarks without weights)."""
        model, tokenizer = load_model(model_name, dtype=dtype, device=device, load_format=load_format)
        bundle.check_model(len(decoder_layers(model)), int(model.config.hidden_size))
        # Serving steers the derived directions (valence, arousal) too, after the emotions (steering_names).
        steerer = HFSteerer(model, bundle, alpha_scale=alpha_scale,
                            basis=bundle.steering_basis(alpha_scale, derived=True) if bundle.derived else None)
        return cls(model, tokenizer, steerer, max_model_len=max_model_len, max_queue=max_queue, max_batch=max_batch,
                   max_batch_tokens=max_batch_tokens)

    @property
    def max_batch(self) -> int:
        """Requests that generate together (1: one at a time)."""
        return self.scheduler.max_batch if self.scheduler is not None else 1

    # ------------------------------------------------------------------------------- prompts
    def chat_prompt(self, messages: list[dict[str, Any]], template_kwargs: dict[str, Any] | None = None) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions", param="messages")
        kwargs = dict(template_kwargs or {})
        bad = sorted(RESERVED_TEMPLATE_KWARGS & kwargs.keys())
        if bad:
            raise APIError(400, f"chat_template_kwargs may not set {bad}", param="chat_template_kwargs")
        try:
            return chat_prompt_ids(self.tokenizer, messages, **kwargs)
        except Exception as exc:  # jinja errors from the template (raise_exception, bad roles) are the client's
            raise APIError(400, f"the chat template rejected these messages: {exc}", param="messages") from None

    def text_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            vocab = len(self.tokenizer)
            if any(not 0 <= t < vocab for t in prompt):
                raise APIError(400, f"prompt token ids must lie in 0..{vocab - 1}", param="prompt")
            return list(prompt)
        return self.tokenizer(prompt).input_ids

    def check_lengths(self, prompt_ids: list[int], max_tokens: int | None) -> int:
        """The request's ``max_tokens`` (defaulted), or a 400 when the prompt and it exceed the context."""
        if not prompt_ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise APIError(400, f"the prompt has {len(prompt_ids)} tokens; this model's context is {self.max_model_len}",
                           param="messages", code="context_length_exceeded")
        if max_tokens is None:
            return min(room, DEFAULT_MAX_TOKENS)
        if max_tokens > room:
            raise APIError(400, f"max_tokens={max_tokens} plus the prompt's {len(prompt_ids)} tokens exceeds this "
                                f"model's context of {self.max_model_len}", param="max_tokens", code="context_length_exceeded")
        return max_tokens

    def sampling_defaults(self) -> tuple[float, float]:
        """Temperature and top_p when a request names none: the model's generation config, else OpenAI's 1.0."""
        config = self.model.generation_config
        return float(config.temperature or 1.0), float(config.top_p or 1.0)

    # ---------------------------------------------------------------------------- generation
    def _generate(self, params: GenerationParams, emit: Callable[[Delta], None], cancel: threading.Event) -> GenerationResult:
        """One request through ``model.generate`` (the one-at-a-time worker)."""
        wanted = params.logprobs is not None
        watcher = TextWatcher(self.tokenizer, len(params.prompt_ids), params.stop, emit, cancel,
                              self.renderer if wanted else None, params.logprobs or 0)
        if cancel.is_set():  # the client left while this request waited in the queue
            return finish(params, watcher, [], cancelled=True)
        # One generation at a time on this thread, so seeding torch's global RNG is safe.
        forwards: list[list[torch.Tensor]] = []  # readout: per forward, every chosen block's projections

        def read(index: int, projections: torch.Tensor) -> None:
            if index == 0:
                forwards.append([])
            forwards[-1].append(projections[0].float().cpu())

        generated = generate(
            self.model, self.tokenizer, [params.prompt_ids], steerer=self.steerer, steerings=[params.row_steering()],
            max_new_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p, seed=params.seed,
            stopping_criteria=StoppingCriteriaList([watcher]), on_logits=watcher.logits.append if wanted else None,
            ignore_eos=params.ignore_eos, on_readout=read if params.readout else None,
        )[0]
        return finish(params, watcher, generated, cancelled=cancel.is_set(), readout=self._readout(params, forwards))

    def _readout(self, params: GenerationParams, forwards: list[list[torch.Tensor]]) -> dict | None:
        """The readout of a request run by ``generate``: its prompt's forward, then each token fed back."""
        if not params.readout or not forwards:
            return None
        n = len(self.steerer.bundle.emotions)  # the readout reads the emotions, not the derived directions
        per_forward = [torch.stack(layers, dim=1).numpy()[..., :n] for layers in forwards]  # [positions, layers, n]
        generated = (np.concatenate(per_forward[1:]) if len(per_forward) > 1
                     else np.zeros((0, *per_forward[0].shape[1:]), dtype=np.float32))
        bundle = self.steerer.bundle
        return readout_summary(list(bundle.emotions), readout_scale(bundle), bundle.steering_mask(),
                               prompt=per_forward[0][1:], generated=generated,
                               per_token=params.readout == "per_token")

    def _submit(self, params: GenerationParams, emit: Callable[[Delta], None],
                cancel: threading.Event) -> Future[GenerationResult]:
        if self.scheduler is not None:
            return self.scheduler.submit(params, emit, cancel)
        return self.executor.submit(self._generate, params, emit, cancel)

    def check_choices(self, count: int) -> None:
        """Refuse a request for more completions (``n``) than this server ever holds at once."""
        if count > self.max_queue:
            raise APIError(400, f"n = {count} asks for more completions than this server holds at once "
                                f"(--max-concurrent-queue {self.max_queue})", param="n")

    def _admit(self, count: int = 1) -> None:
        self.check_choices(count)
        if self.pending + count > self.max_queue:
            raise APIError(429, f"the server is busy ({self.pending} requests queued); retry later",
                           code="queue_full")
        self.pending += count

    async def complete(
        self, params: GenerationParams, disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> GenerationResult:
        """Run one generation on the worker thread and return its result.

        ``disconnected`` (e.g. starlette's ``Request.is_disconnected``) is polled while the request
        waits or runs; once the client is gone the generation stops at its next step, and a request
        still queued is skipped, so an abandoned request never holds up the ones behind it.
        """
        return (await self.complete_all([params], disconnected))[0]

    async def complete_all(
        self, params: Sequence[GenerationParams], disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> list[GenerationResult]:
        """Several generations of one request (its ``n`` choices), admitted together, batched together when the
        server batches; their results in order. A client that leaves cancels them all."""
        self._admit(len(params))
        cancel = threading.Event()
        self.cancel_events.add(cancel)
        try:
            futures = [asyncio.wrap_future(self._submit(p, lambda _: None, cancel)) for p in params]
            while disconnected is not None:
                _, running = await asyncio.wait(futures, timeout=DISCONNECT_POLL_S)
                if not running:
                    break
                if await disconnected():
                    cancel.set()
                    break
            return [await future for future in futures]
        finally:
            self.cancel_events.discard(cancel)
            self.pending -= len(params)

    async def stream(self, params: GenerationParams) -> AsyncIterator[Delta | GenerationResult]:
        """Yields ``Delta``s as they are decoded, then the final ``GenerationResult``.

        Closing the iterator early (client gone) cancels the generation at its next step.
        """
        async for _, item in self.stream_all([params]):
            yield item

    async def stream_all(self, params: Sequence[GenerationParams]) -> AsyncIterator[tuple[int, Delta | GenerationResult]]:
        """``(choice index, item)`` of several generations as they are decoded: each choice's ``Delta``s in
        order, then its ``GenerationResult``; choices interleave. Closing the iterator cancels them all."""
        self._admit(len(params))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, Delta]] = asyncio.Queue()
        cancel = threading.Event()
        self.cancel_events.add(cancel)

        def emitter(index: int) -> Callable[[Delta], None]:
            return lambda delta: loop.call_soon_threadsafe(queue.put_nowait, (index, delta))

        try:
            running = {asyncio.wrap_future(self._submit(p, emitter(i), cancel)): i for i, p in enumerate(params)}
            while running:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, *running}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                    continue
                getter.cancel()
                # A choice has ended: the deltas it emitted reached the queue before its result (the loop runs
                # callbacks in the order the worker scheduled them), so they go out first.
                while not queue.empty():
                    yield queue.get_nowait()
                for future in [f for f in running if f.done()]:
                    yield running.pop(future), future.result()
        finally:
            cancel.set()
            self.cancel_events.discard(cancel)
            self.pending -= len(params)

    def shutdown(self) -> None:
        for event in list(self.cancel_events):
            event.set()
        if self.scheduler is not None:
            self.scheduler.shutdown()
        self.executor.shutdown(wait=False, cancel_futures=True)
