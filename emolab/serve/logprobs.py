"""Token logprobs in the OpenAI shape, computed and rendered the way vLLM (0.32) reports them by default.

What is reported: ``log_softmax`` of the model's unprocessed next-token logits (vLLM's default
``logprobs_mode="raw_logprobs"``: before temperature, top_p and penalties, whatever the token was sampled
with). Each position keeps vLLM's order: the sampled token first, then the top ``k`` (descending) without
repeating it, so a greedy step reads in descending order and a sampled token outside the top ``k`` leads
the list. Chat shows the first ``k`` of them; completions the first ``k + 1`` (OpenAI's legacy rule), as
``{token: logprob}``. Token strings are each id decoded on its own, as vLLM's
``convert_ids_list_to_tokens`` does (byte-level BPE: ``"Ġthe"`` reads ``" the"``; a SentencePiece leading
``"▁"`` becomes a space), and a string ending in U+FFFD (part of a multi-byte character) is completed from
the preceding sampled tokens, else ``""``. Logprobs below -9999 read -9999, as vLLM's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["LOGPROB_FLOOR", "StepLogprobs", "TokenRenderer", "chat_logprobs", "completion_logprobs"]

LOGPROB_FLOOR = -9999.0  # what OpenAI (and vLLM) send for -inf
REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 4  # enough preceding tokens for any UTF-8 sequence


@dataclass(frozen=True)
class StepLogprobs:
    """One generated position: ids, logprobs and strings, the sampled token first, then the top k."""

    ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    tokens: tuple[str, ...]


class TokenRenderer:
    """Turns one step's logits into a ``StepLogprobs``, with vLLM's per-token strings for this tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.marker = _leading_space_marker(tokenizer)

    def step(self, logits: torch.Tensor, token_id: int, k: int, context: Sequence[int]) -> StepLogprobs:
        """``logits``: ``[vocab]`` raw logits of the step that chose ``token_id``; ``context``: the tokens before it."""
        logprobs = torch.log_softmax(logits.to(torch.float32), dim=-1)
        values, indices = torch.topk(logprobs, k)
        top = [(t, v) for t, v in zip(indices.tolist(), values.tolist(), strict=True) if t != token_id]
        ids = [token_id] + [t for t, _ in top]
        values = [float(logprobs[token_id])] + [v for _, v in top]
        return StepLogprobs(tuple(ids), tuple(max(v, LOGPROB_FLOOR) for v in values),
                            tuple(self.render(ids, context)))

    def render(self, ids: Sequence[int], context: Sequence[int]) -> list[str]:
        """Each id's string alone; ``context`` (the sampled tokens before this position) mends broken characters."""
        decode = self.tokenizer.decode
        texts = [decode([t]) or "" for t in ids]
        if self.marker is not None:
            raws = self.tokenizer.convert_ids_to_tokens(list(ids))
            texts = [_restore_spaces(raw or "", text, self.marker) for raw, text in zip(raws, texts, strict=True)]
        context = list(context)[-CONTEXT_TOKENS:]
        return [self._mend(t, context) if text.endswith(REPLACEMENT) else text for t, text in zip(ids, texts, strict=True)]

    def _mend(self, token_id: int, context: list[int]) -> str:
        """vLLM's ``_correct_decoded_token``: the text this token completes together with the tokens before it."""
        decode = self.tokenizer.decode
        for n in range(1, len(context) + 1):
            before = context[-n:]
            full = decode(before + [token_id])
            if full.endswith(REPLACEMENT):
                continue
            clean = len(before)  # context tokens that are themselves partial characters belong to this one
            while clean > 0 and decode([before[clean - 1]]).endswith(REPLACEMENT):
                clean -= 1
            prefix = decode(before[:clean]) if clean else ""
            if full.startswith(prefix):
                return full[len(prefix):]
            return full[len(os.path.commonprefix([prefix, full])):]
        return ""


def chat_logprobs(steps: Sequence[StepLogprobs], k: int) -> dict[str, Any]:
    """``choices[i].logprobs`` of a chat completion: one entry per token, with its ``k`` top alternatives."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8", errors="replace"))}

    return {"content": [{**entry(s.tokens[0], s.logprobs[0]),
                         "top_logprobs": [entry(t, lp) for t, lp in zip(s.tokens[:k], s.logprobs[:k], strict=True)]}
                        for s in steps]}


def completion_logprobs(steps: Sequence[StepLogprobs], k: int, offset: int = 0) -> dict[str, Any]:
    """``choices[i].logprobs`` of a text completion; ``offset``: the ``text_offset`` of the first token (streaming)."""
    offsets = []
    for s in steps:
        offsets.append(offset)
        offset += len(s.tokens[0])
    return {"tokens": [s.tokens[0] for s in steps], "token_logprobs": [s.logprobs[0] for s in steps],
            "top_logprobs": [dict(zip(s.tokens[:k + 1], s.logprobs[:k + 1], strict=True)) for s in steps],
            "text_offset": offsets}


def _leading_space_marker(tokenizer: Any) -> str | None:
    """The Metaspace replacement character that ``decode`` strips from a lone token, if this tokenizer has one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        pre = json.loads(backend.to_str()).get("pre_tokenizer") or {}
    except Exception:
        return None
    for sub in [pre, *(pre.get("pretokenizers") or [] if pre.get("type") == "Sequence" else [])]:
        if sub.get("type") == "Metaspace":
            return sub.get("replacement", "\u2581")
    return None


def _restore_spaces(raw: str, text: str, marker: str) -> str:
    """Put back the leading spaces ``decode`` dropped from a lone SentencePiece token."""
    markers = len(raw) - len(raw.lstrip(marker))
    missing = markers - (len(text) - len(text.lstrip(" ")))
    return " " * missing + text if missing > 0 else text
