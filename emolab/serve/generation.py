"""What one HF-backend generation is: its parameters, its streamed deltas, its result, and the text watcher.

Both ways the HF backend generates (one request at a time through ``model.generate``, or many requests in
one batch through ``emolab.serve.hf_batch``) report through the same ``TextWatcher`` and end through the
same ``finish``, so text, stop strings, logprobs, finish reasons and token counts cannot drift apart.

``TextWatcher.observe`` is called once per generated token: it decodes the generated ids, cuts at stop
strings the way OpenAI does (the stop string itself is not returned), holds back a tail that might still
become a stop string (or is half a character), and emits what is safe as a ``Delta``. When logprobs are
asked for, the step's raw logits become that token's ``StepLogprobs`` and every step is a delta of its own
(its text may be empty), as vLLM streams them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import StoppingCriteria

from emolab.core.steering import Steering
from emolab.serve.logprobs import StepLogprobs, TokenRenderer

__all__ = ["Delta", "GenerationParams", "GenerationResult", "TextWatcher", "finish"]


@dataclass
class GenerationParams:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    coeffs: np.ndarray | None = None  # [n_emotions]; None or zeros = the plain model (additions only)
    logprobs: int | None = None  # top alternatives per token (0..20); None = no logprobs
    ignore_eos: bool = False  # run to max_tokens through end-of-sequence tokens (vLLM's ignore_eos)
    steering: Steering | None = None  # the full steering (modes, scope); wins over coeffs when given
    readout: str | None = None  # None, "means" or "per_token" (emolab.core.readout.readout_summary)

    def row_steering(self) -> Steering | None:
        """What steers this request: ``steering``, else plain additions of ``coeffs``."""
        if self.steering is not None:
            return self.steering or None
        if self.coeffs is None or not np.any(self.coeffs):
            return None
        return Steering(tuple((e, float(a)) for e, a in enumerate(np.asarray(self.coeffs, np.float32)) if a))


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string), "length", or "abort"
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]
    logprobs: list[StepLogprobs] | None = None  # one per generated token (the stop token too) when asked for
    readout: dict | None = None  # emolab.core.readout.readout_summary, when asked for


@dataclass
class Delta:
    """What one streaming step adds: text (may be empty) and, when asked for, the steps' logprobs."""

    text: str
    logprobs: list[StepLogprobs] = field(default_factory=list)


class TextWatcher(StoppingCriteria):
    """One request's stream: decodes after every token, cuts at stop strings, emits safe text deltas.

    ``observe`` is the per-token entry point (the batched path calls it); as a transformers
    ``StoppingCriteria`` (the one-at-a-time path) it reads the ids from ``input_ids`` and the step's logits
    from ``logits`` (filled by ``generate``'s ``on_logits``).
    """

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

    def observe(self, ids: list[int], logits: torch.Tensor | None = None) -> bool:
        """``ids``: every token generated so far (the newest last); ``logits``: the raw ``[vocab]`` logits that
        chose it (used when logprobs are asked for). True when the request should stop (stop string, cancel)."""
        steps = None
        if self.renderer is not None and logits is not None:
            steps = [self.renderer.step(logits, ids[-1], self.top, ids[:-1])]
            self.steps.extend(steps)
        self.push(self.text_of(ids), final=False, steps=steps)
        return self.stop_hit or self.cancel.is_set()

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        logits = self.logits[-1][0] if self.logits else None  # one forward pass per step: its logits chose ids[-1]
        self.logits.clear()
        done = self.observe(input_ids[0, self.prompt_len :].tolist(), logits)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def finish(params: GenerationParams, watcher: TextWatcher, generated: list[int], cancelled: bool,
           readout: dict | None = None) -> GenerationResult:
    """The result of a generation that produced ``generated`` (cut before its end-of-sequence token, if any).

    Sends what the watcher still held back. A generation that ended before ``max_tokens`` without a stop string
    or a cancel ended on an end-of-sequence token: it is cut from the text but was generated, so it counts in
    ``completion_tokens``, as in vLLM's usage.
    """
    text = watcher.text_of(generated)
    watcher.push(text, final=True)
    ended_early = len(generated) < params.max_tokens
    if cancelled:
        reason = "abort"
    elif watcher.stop_hit or ended_early:
        reason = "stop"
    else:
        reason = "length"
    n_tokens = len(generated) + (1 if ended_early and not watcher.stop_hit and not cancelled else 0)
    return GenerationResult(text, reason, len(params.prompt_ids), n_tokens, generated,
                            watcher.steps if params.logprobs is not None else None, readout)
