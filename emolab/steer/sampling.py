"""One request's next-token choice as ``model.generate`` makes it, drawing from the request's own random stream.

``TokenChooser`` applies the logits processors ``generate`` would apply for this request and this model's
generation config, in ``generate``'s order: the repetition penalty (greedy too), then, when sampling,
temperature, top-k (the model's, else transformers' default of 50), the request's top-p and the model's
min-p; then the arg max (greedy) or one draw (``torch.multinomial``). Each request owns a
``torch.Generator`` seeded with its seed, so a seeded request draws the same tokens whatever else shares
its batch; on CPU the stream is the one ``torch.manual_seed(seed)`` starts, so a seeded request alone draws
what ``generate`` draws after that call. Generation-config settings outside that list are named by
``unsupported_settings``: a server that finds one generates through ``generate`` itself instead.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

__all__ = ["TRANSFORMERS_TOP_K", "TokenChooser", "unsupported_settings"]

TRANSFORMERS_TOP_K = 50  # what generate samples with when the model's generation config names no top_k
# Generation-config settings that add logits processors TokenChooser does not apply, and their neutral values.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None, []),
    "suppress_tokens": (None, []), "begin_suppress_tokens": (None, []), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "min_length": (None, 0), "min_new_tokens": (None, 0), "sequence_bias": (None, {}),
    "encoder_repetition_penalty": (None, 1.0), "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0), "top_h": (None,), "exponential_decay_length_penalty": (None,),
    "watermarking_config": (None,), "guidance_scale": (None, 1.0),
}


def unsupported_settings(generation_config: Any) -> list[str]:
    """The settings of ``generation_config`` whose logits processors ``TokenChooser`` would not apply."""
    return [f"{name}={getattr(generation_config, name)!r}" for name, neutral in _NEUTRAL.items()
            if getattr(generation_config, name, None) not in neutral]


class TokenChooser:
    """Chooses one request's tokens: its processors, greedy or sampled, with its own generator."""

    def __init__(self, generation_config: Any, *, temperature: float, top_p: float, seed: int | None,
                 device: torch.device) -> None:
        self.greedy = temperature <= 0
        processors: list[Any] = []
        penalty = getattr(generation_config, "repetition_penalty", None)
        if penalty is not None and penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(penalty))
        if not self.greedy:
            if temperature != 1.0:
                processors.append(TemperatureLogitsWarper(temperature))
            top_k = getattr(generation_config, "top_k", None)
            top_k = TRANSFORMERS_TOP_K if top_k is None else top_k
            if top_k:
                processors.append(TopKLogitsWarper(top_k=top_k))
            if top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p=top_p))
            min_p = getattr(generation_config, "min_p", None)
            if min_p is not None:
                processors.append(MinPLogitsWarper(min_p=min_p))
        self.processors = LogitsProcessorList(processors)
        self.generator: torch.Generator | None = None
        if not self.greedy:
            self.generator = torch.Generator(device=device)
            if seed is None:
                self.generator.seed()  # a fresh nondeterministic seed, as an unseeded generate call gets
            else:
                self.generator.manual_seed(seed)

    @property
    def plain_greedy(self) -> bool:
        """True when the choice is the arg max of the raw logits (the batch takes those rows in one go)."""
        return self.greedy and not self.processors

    def choose(self, logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """The next token (a 0-d tensor on the logits' device) from ``[vocab]`` float32 logits; ``ids``: the
        sequence so far, prompt and generated tokens (what the repetition penalty looks at)."""
        scores = logits[None]
        if self.processors:
            context = torch.tensor([ids], dtype=torch.long, device=logits.device)
            scores = self.processors(context, scores.clone())
        if self.greedy:
            return scores[0].argmax(-1)
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=self.generator)[0, 0]
