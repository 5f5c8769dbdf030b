"""Steering prompt sets and the contrastive-prompt (CAA / repeng style) captures built from them.

The files live in ``emolab/data/steering/`` (package data):

* ``prompts_extract.txt``: neutral user turns for contrastive extraction only;
* ``prompts_tune.txt``: neutral user turns every tuning choice is made on;
* ``prompts_heldout.txt``: disjoint neutral user turns, only for reporting a tuned recipe;
* ``prompts_continue_tune.txt`` / ``prompts_continue_heldout.txt``: the same two roles for models
  without a chat template: disjoint neutral story openings that the model continues;
* ``instructions.json``: parallel persona instructions (index k of every emotion's list and of
  ``neutral`` differ only in the emotion words);
* ``answer_openings.txt``: generic answer openings the paired activations are read over.

A contrastive pair is one chat rendered twice with the model's chat template: the system message
is the emotion's instruction or the neutral one at the same index, the user turn and the answer
tokens are the same. Activations are pooled over the answer positions (from the last prompt token,
which predicts the first answer token, to the end of the answer).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import numpy as np

from emolab.core.models import pad_token_id
from emolab.extraction.capture import collect_span_activations
from emolab.extraction.errors import ExtractError
from emolab.extraction.methods import mean_difference, paired_differences, principal_direction

__all__ = ["PROMPT_SETS", "contrastive_pairs", "contrastive_prompt_vectors", "load_instructions", "read_prompts",
           "steering_file"]

PROMPT_SETS = ("extract", "tune", "heldout", "continue_tune", "continue_heldout")


def steering_file(name: str) -> str:
    """The text of one file of ``emolab/data/steering``."""
    return resources.files("emolab").joinpath("data", "steering", name).read_text(encoding="utf-8")


def read_prompts(name: str) -> list[str]:
    """A prompt set by name (``PROMPT_SETS``): one user turn, or one text to continue, per line."""
    if name not in PROMPT_SETS:
        raise ExtractError(f"unknown prompt set {name!r}; choose from {list(PROMPT_SETS)}")
    return [line.strip() for line in steering_file(f"prompts_{name}.txt").splitlines() if line.strip()]


def load_instructions(emotions: list[str]) -> dict[str, list[str]]:
    """The parallel persona instructions of ``neutral`` and each emotion (same number of phrasings)."""
    data = json.loads(steering_file("instructions.json"))
    missing = [e for e in ["neutral", *emotions] if e not in data]
    if missing:
        raise ExtractError(f"no persona instructions for {missing}", setting="emotions")
    counts = {len(data[e]) for e in ["neutral", *emotions]}
    if len(counts) != 1:
        raise ExtractError("the persona instructions do not have one phrasing per index for every emotion")
    return {e: list(data[e]) for e in ["neutral", *emotions]}


def contrastive_pairs(
    tokenizer: Any, emotions: list[str], turns: list[str], answers: list[list[int]],
    instructions: dict[str, list[str]],
) -> tuple[list[list[int]], list[tuple[int, int]], list[tuple[str, int, int]]]:
    """Every (condition, phrasing, turn) chat plus its answer tokens; spans cover the answer positions.

    Conditions are ``neutral`` and each emotion; ``keys[i] = (condition, phrasing, turn)``.
    """
    from emolab.core.models import chat_prompt_ids

    sequences, spans, keys = [], [], []
    for condition in ["neutral", *emotions]:
        for k, instruction in enumerate(instructions[condition]):
            for u, turn in enumerate(turns):
                prompt = chat_prompt_ids(tokenizer, [{"role": "system", "content": instruction},
                                                     {"role": "user", "content": turn}])
                answer = answers[u % len(answers)]
                sequences.append(prompt + list(answer))
                spans.append((len(prompt) - 1, len(prompt) + len(answer)))
                keys.append((condition, k, u))
    return sequences, spans, keys


def contrastive_prompt_vectors(
    model: Any, tokenizer: Any, emotions: list[str], layers: list[int], *, n_turns: int | None = None,
    positions: str = "mean", pca: bool = False, batch_size: int = 16,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Emotion-vs-neutral vectors ``[n_emotions, n_layers, hidden]`` from contrastive prompts, and a summary.

    ``positions``: ``mean`` over the answer positions or the ``last`` one. ``pca``: the first
    principal axis of the paired differences instead of their mean.
    """
    turns = read_prompts("extract")[:n_turns] if n_turns else read_prompts("extract")
    openings = [line.strip() for line in steering_file("answer_openings.txt").splitlines() if line.strip()]
    answers = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in openings]
    instructions = load_instructions(emotions)
    sequences, spans, keys = contrastive_pairs(tokenizer, emotions, turns, answers, instructions)
    pad = pad_token_id(tokenizer)
    acts = collect_span_activations(model, sequences, spans, layers, pad_id=pad, batch_size=batch_size)[positions]
    index = {key: i for i, key in enumerate(keys)}
    vectors = np.empty((len(emotions), len(layers), acts.shape[2]), dtype=np.float32)
    for e, emotion in enumerate(emotions):
        pairs = [(index[key], index[("neutral", key[1], key[2])]) for key in keys if key[0] == emotion]
        diffs = paired_differences(acts[[a for a, _ in pairs]], acts[[b for _, b in pairs]])
        vectors[e] = principal_direction(diffs) if pca else mean_difference(diffs)
    info = {"n_turns": len(turns), "n_phrasings": len(instructions["neutral"]), "n_pairs_per_emotion":
            len(turns) * len(instructions["neutral"]), "answers": "answer_openings.txt",
            "instruction_in": "system message", "pooled": f"{positions} over the answer positions"}
    return vectors, info
