"""The emotion readout of a text or a chat, in-process, for any transformers model: a score per token and emotion.

``EmotionReadout(model, tokenizer, bundle).text("...")`` runs the text through the model once and returns
every token's score for every emotion (``emolab.core.readout``: the projection of block L's output on the
emotion's direction, standardized against the bundle's reference, averaged over the emotion's layers).
``.chat(messages)`` applies the chat template first (as the servers do) and marks which tokens belong to
which message. Nothing is steered here: this is what the text itself carries inside the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emolab.core.bundle import EmotionBundle
from emolab.core.models import chat_prompt_ids, pad_token_id
from emolab.core.readout import READOUT_KEY, ReadoutScale, readout_scale, score_tokens, unit_directions
from emolab.extraction.data import rebuild_split
from emolab.extraction.projections import reference_from_texts, token_projections

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EmotionReadout", "ReadoutResult", "record_reference"]


@dataclass
class ReadoutResult:
    """One text's readout: its tokens and, per token, a score per emotion (``scale`` says what a score means)."""

    emotions: list[str]
    token_ids: list[int]
    tokens: list[str]  # each token decoded on its own (a piece of a multi-byte character shows as U+FFFD)
    scores: np.ndarray  # [T, n_emotions]
    sinks: np.ndarray  # [T] bool: an attention sink at one of the chosen layers (left out of means)
    scale: ReadoutScale
    segments: list[tuple[str, int, int]] | None = None  # chat: (role, first token, end) of each message's tokens

    def mean(self, start: int = 0, end: int | None = None, *, include_sinks: bool = False) -> dict[str, float]:
        """Each emotion's mean score over tokens ``start:end`` (sinks left out unless asked for)."""
        rows = np.arange(len(self.token_ids))[start:end]
        if not include_sinks:
            rows = rows[~self.sinks[rows]]
        values = self.scores[rows].mean(axis=0) if len(rows) else np.full(len(self.emotions), np.nan)
        return {e: float(v) for e, v in zip(self.emotions, values, strict=True)}

    def frame(self) -> pd.DataFrame:
        """One row per token: position, token, sink, role (chat), then a column per emotion."""
        import pandas as pd

        data: dict[str, Any] = {"position": np.arange(len(self.token_ids)), "token": self.tokens,
                                "sink": self.sinks}
        if self.segments:
            roles = [""] * len(self.token_ids)
            for role, lo, hi in self.segments:
                roles[lo:hi] = [role] * (hi - lo)
            data["role"] = roles
        for i, emotion in enumerate(self.emotions):
            data[emotion] = self.scores[:, i]
        return pd.DataFrame(data)


class EmotionReadout:
    """Reads a bundle's emotions out of a transformers model (the bundle must fit the model)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, bundle: EmotionBundle) -> None:
        from emolab.core.models import decoder_layers

        bundle.check_model(len(decoder_layers(model)), int(model.config.hidden_size))
        self.model, self.tokenizer, self.bundle = model, tokenizer, bundle
        self.directions = unit_directions(bundle)
        self.mask = bundle.steering_mask()
        self.scale = readout_scale(bundle)

    def ids(self, token_ids: Sequence[int], segments: list[tuple[str, int, int]] | None = None) -> ReadoutResult:
        """The readout of a token sequence as given (no special tokens added)."""
        ids = [int(t) for t in token_ids]
        projections, sinks = token_projections(self.model, [ids], list(self.bundle.chosen_layers), self.directions,
                                               pad_id=pad_token_id(self.tokenizer), batch_size=1)
        scores = score_tokens(projections[0], self.scale, self.mask)
        tokens = [self.tokenizer.decode([t]) for t in ids]
        return ReadoutResult(list(self.bundle.emotions), ids, tokens, scores, sinks[0].any(axis=1), self.scale,
                             segments)

    def text(self, text: str) -> ReadoutResult:
        """A plain text, tokenized as a prompt is (the tokenizer's special tokens added, e.g. ``<bos>``)."""
        return self.ids(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
             **template_kwargs: Any) -> ReadoutResult:
        """A chat, through the tokenizer's chat template; ``segments`` say which tokens each message spans."""
        messages = [dict(m) for m in messages]
        ids = chat_prompt_ids(self.tokenizer, messages, add_generation_prompt=add_generation_prompt, **template_kwargs)
        segments, start = [], 0
        for k, message in enumerate(messages):  # a message ends where the template of the first k+1 ends
            prefix = chat_prompt_ids(self.tokenizer, messages[:k + 1], add_generation_prompt=False, **template_kwargs)
            end = _common_prefix(prefix, ids)
            segments.append((str(message.get("role", "")), start, end))
            start = end
        return self.ids(ids, segments)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def record_reference(bundle: EmotionBundle, model: torch.nn.Module, tokenizer: Any, *, data: str | None = None,
                     batch_size: int = 16) -> EmotionBundle:
    """A copy of ``bundle`` with the readout reference that extraction records today, taken over the held-out
    texts of the bundle's own split (``rebuild_split``: its data, seed and share), for bundles made before."""
    from emolab.core.models import decoder_layers

    bundle.check_model(len(decoder_layers(model)), int(model.config.hidden_size))
    dataset = rebuild_split(bundle.metadata, data)
    reference = reference_from_texts(model, tokenizer, dataset.val_texts, list(bundle.chosen_layers),
                                     unit_directions(bundle), batch_size=batch_size,
                                     max_length=int(bundle.metadata.get("max_length", 128)),
                                     source=f"the held-out {dataset.source.partition(':')[0]} texts, every content token")
    return EmotionBundle(list(bundle.emotions), list(bundle.chosen_layers), dict(bundle.vectors),
                         {**bundle.metadata, READOUT_KEY: reference.to_metadata()}, bundle.full_sweep)
