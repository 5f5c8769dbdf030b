"""The Hugging Face serving backend: one transformers model, one worker thread, steering via ``HFSteerer``.

Requests run one at a time on a single worker thread so the event loop (``/health``, other clients,
validation) stays responsive while a generation is in flight. Steering hooks are added for the
duration of one ``model.generate`` call, so they cover every position: prompt and generated tokens.
Text is streamed by decoding the generated ids after each step; stop strings are cut the way
OpenAI does (the stop string itself is not returned) and a tail that might still become a stop
string is held back until it can't. When logprobs are asked for, each step's raw logits become that
token's ``StepLogprobs`` (``emolab.serve.logprobs``) as the step is taken, and every step is a delta
of its own (its text may be empty), as vLLM streams them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from emolab.core.bundle import EmotionBundle
from emolab.core.models import chat_prompt_ids, decoder_layers, load_model
from emolab.serve.contract import APIError
from emolab.serve.logprobs import StepLogprobs, TokenRenderer
from emolab.steer import HFSteerer, generate

__all__ = ["Delta", "GenerationParams", "GenerationResult", "HFBackend"]

DEFAULT_MAX_TOKENS = 256  # when a request names none (CPU-friendly; vLLM would use the whole context)
DEFAULT_MAX_QUEUE = 64
DISCONNECT_POLL_S = 0.25  # how often a waiting non-streaming request checks that its client is still there
# apply_chat_template arguments a request may not override through chat_template_kwargs.
RESERVED_TEMPLATE_KWARGS = {"conversation", "tokenize", "return_tensors", "return_dict", "chat_template", "tokenizer_kwargs"}


@dataclass
class GenerationParams:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    coeffs: np.ndarray | None = None  # [n_emotions]; None or zeros = the plain model
    logprobs: int | None = None  # top alternatives per token (0..20); None = no logprobs


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string), "length", or "abort"
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]
    logprobs: list[StepLogprobs] | None = None  # one per generated token (the stop token too) when asked for


@dataclass
class Delta:
    """What one streaming step adds: text (may be empty) and, when asked for, the steps' logprobs."""

    text: str
    logprobs: list[StepLogprobs] = field(default_factory=list)


class _TextWatcher(StoppingCriteria):
    """Called by ``generate`` after every step: decodes, cuts at stop strings, emits safe text deltas."""

    def __init__(self, tokenizer, prompt_len: int, stop: list[str], emit: Callable[[Delta], None],
                 cancel: threading.Event, renderer: TokenRenderer | None = None, top: int = 0):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stop = stop
        self.emit = emit
        self.cancel = cancel
        self.emitted = 0
        self.stop_hit = False
        self.renderer, self.top = renderer, top  # renderer None: no logprobs
        self.logits: list[torch.Tensor] = []  # the step just taken's raw logits, from generate's on_logits
        self.steps: list[StepLogprobs] = []

    def text_of(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stop_hit = True
            text = text[: min(hits)]
        return text

    def safe_length(self, text: str) -> int:
        """How much of ``text`` can be sent now: not a half-decoded character, not a possible stop prefix."""
        if self.stop_hit:
            return len(text)
        end = len(text.rstrip("\ufffd"))
        for s in self.stop:
            for k in range(min(len(s) - 1, end), 0, -1):
                if text[end - k : end] == s[:k]:
                    end -= k
                    break
        return end

    def push(self, text: str, final: bool, steps: list[StepLogprobs] | None = None) -> None:
        end = max(len(text) if final else self.safe_length(text), self.emitted)
        if end > self.emitted or steps:
            self.emit(Delta(text[self.emitted : end], steps or []))
            self.emitted = end

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        ids = input_ids[0, self.prompt_len :].tolist()
        steps = None
        if self.renderer is not None and self.logits:  # one forward pass per step: its logits chose ids[-1]
            steps = [self.renderer.step(self.logits[-1][0], ids[-1], self.top, ids[:-1])]
            self.logits.clear()
            self.steps.extend(steps)
        self.push(self.text_of(ids), final=False, steps=steps)
        done = self.stop_hit or self.cancel.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class HFBackend:
    """A loaded model + tokenizer + steerer, and the serial worker that runs generations."""

    def __init__(self, model, tokenizer, steerer: HFSteerer, *, max_model_len: int | None = None,
                 max_queue: int = DEFAULT_MAX_QUEUE) -> None:
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

    @classmethod
    def load(cls, model_name: str, bundle: EmotionBundle, *, dtype: str = "auto", device: str = "auto",
             alpha_scale: str | None = None, max_model_len: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE) -> HFBackend:
        """Load the model and cast the bundle once; refuses a bundle that does not fit the model."""
        model, tokenizer = load_model(model_name, dtype=dtype, device=device)
        bundle.check_model(len(decoder_layers(model)), int(model.config.hidden_size))
        steerer = HFSteerer(model, bundle, alpha_scale=alpha_scale)
        return cls(model, tokenizer, steerer, max_model_len=max_model_len, max_queue=max_queue)

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
        wanted = params.logprobs is not None
        if cancel.is_set():  # the client left while this request waited in the queue
            return GenerationResult("", "abort", len(params.prompt_ids), 0, [], [] if wanted else None)
        watcher = _TextWatcher(self.tokenizer, len(params.prompt_ids), params.stop, emit, cancel,
                               self.renderer if wanted else None, params.logprobs or 0)
        # One generation at a time on this thread, so seeding torch's global RNG is safe.
        generated = generate(
            self.model, self.tokenizer, [params.prompt_ids], steerer=self.steerer, coeffs=params.coeffs,
            max_new_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p, seed=params.seed,
            stopping_criteria=StoppingCriteriaList([watcher]), on_logits=watcher.logits.append if wanted else None,
        )[0]
        text = watcher.text_of(generated)
        watcher.push(text, final=True)
        ended_early = len(generated) < params.max_tokens
        if cancel.is_set():
            reason = "abort"
        elif watcher.stop_hit or ended_early:
            reason = "stop"
        else:
            reason = "length"
        # The stop token is cut from the text but was generated: it counts, as in vLLM's usage.
        n_tokens = len(generated) + (1 if ended_early and not watcher.stop_hit and not cancel.is_set() else 0)
        return GenerationResult(text, reason, len(params.prompt_ids), n_tokens, generated,
                                watcher.steps if wanted else None)

    def _admit(self) -> None:
        if self.pending >= self.max_queue:
            raise APIError(429, f"the server is busy ({self.pending} requests queued); retry later",
                           code="queue_full")
        self.pending += 1

    async def complete(
        self, params: GenerationParams, disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> GenerationResult:
        """Run one generation on the worker thread and return its result.

        ``disconnected`` (e.g. starlette's ``Request.is_disconnected``) is polled while the request
        waits or runs; once the client is gone the generation stops at its next step, and a request
        still queued is skipped, so an abandoned request never holds up the ones behind it.
        """
        self._admit()
        cancel = threading.Event()
        self.cancel_events.add(cancel)
        try:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self.executor, self._generate, params, lambda _: None, cancel)
            while disconnected is not None:
                done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
                if done:
                    break
                if await disconnected():
                    cancel.set()
                    break
            return await future
        finally:
            self.cancel_events.discard(cancel)
            self.pending -= 1

    async def stream(self, params: GenerationParams) -> AsyncIterator[Delta | GenerationResult]:
        """Yields ``Delta``s as they are decoded, then the final ``GenerationResult``.

        Closing the iterator early (client gone) cancels the generation at its next step.
        """
        self._admit()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta] = asyncio.Queue()
        cancel = threading.Event()
        self.cancel_events.add(cancel)

        def emit(delta: Delta) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        future = loop.run_in_executor(self.executor, self._generate, params, emit, cancel)
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                    continue
                getter.cancel()
                while not queue.empty():  # deltas emitted just before the end
                    yield queue.get_nowait()
                yield future.result()
                return
        finally:
            cancel.set()
            self.cancel_events.discard(cancel)
            self.pending -= 1

    def shutdown(self) -> None:
        for event in list(self.cancel_events):
            event.set()
        self.executor.shutdown(wait=False, cancel_futures=True)
