"""Learned directions: a steering direction fitted by gradient descent on what the push does to replies.

Mean differences read an emotion off activations; nothing in that recipe looks at the steered
model's text. ``learned`` starts from such a direction and moves it so that, pushed at a fixed
strength over a window of layers, it makes the model's replies to neutral user turns more like
texts of the emotion than like texts of the other emotions or neutral ones. The loss is a
preference loss with the unsteered model as reference (in the spirit of BiPO, Cao et al. 2024):

    d(y)  = mean log p_steered(y | turn) - mean log p_plain(y | turn)      (per answer token)
    loss  = -log sigmoid(beta * (d(y_emotion) - d(y_other))) + fluency_weight * relu(-d(y_emotion))

The second term stops the cheap way to a large margin, making every reply unlikely (which reads as
broken text once generated). Only the direction is learned: the push length is fixed at
``alpha * NORMALIZED_FRACTION * residual_norm[L]`` on every window layer, so the tune's alphas keep
their meaning. The answers are GoEmotions texts of the ``dev`` split by default: the judge is fitted on
``train`` and scored on ``test``, so what the vectors are fitted to is never what grades them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from emolab.core.bundle import NORMALIZED_FRACTION
from emolab.core.models import chat_prompt_ids, pad_token_id
from emolab.core.push import push
from emolab.extraction.errors import ExtractError
from emolab.extraction.learn_settings import LearnSettings, check_window

__all__ = ["answer_logprob", "learn_direction", "learned_vectors", "preference_pairs"]

Pair = tuple[list[int], list[int]]  # (prompt ids, answer ids)


def answer_logprob(model: torch.nn.Module, pairs: Sequence[Pair], pad_id: int) -> torch.Tensor:
    """Mean log-probability per answer token of each ``(prompt, answer)``, ``[len(pairs)]``.

    Sequences are right-padded, so every real token keeps its position; the answer's first token is
    predicted from the prompt's last position.
    """
    device = next(model.parameters()).device
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    scored = torch.zeros((len(pairs), width), dtype=torch.bool)
    for i, (prompt, answer) in enumerate(pairs):
        if not answer:
            raise ExtractError("an answer of no tokens has no log-probability")
        n = len(prompt) + len(answer)
        ids[i, :n] = torch.tensor([*prompt, *answer], dtype=torch.long)
        mask[i, :n] = 1
        scored[i, len(prompt):n] = True
    ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    token_lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    weight = scored[:, 1:].float()
    return (token_lp * weight).sum(dim=1) / weight.sum(dim=1)


def preference_pairs(tokenizer: Any, turns: Sequence[str], emotional: Sequence[str], others: Sequence[str],
                     n_pairs: int, max_answer_tokens: int, rng: random.Random) -> tuple[list[Pair], list[Pair]]:
    """``n_pairs`` chats (a neutral user turn, then an emotional answer) and the same chats answered by
    a text of another emotion or a neutral one; answers end with the end-of-turn token when the
    tokenizer has one."""
    if not emotional or not others:
        raise ExtractError("learned directions need texts of the emotion and texts of other emotions")
    end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    prompts = [chat_prompt_ids(tokenizer, [{"role": "user", "content": turn}]) for turn in turns]

    def answer(text: str) -> list[int]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_answer_tokens]
        return ids + [end] if end is not None else ids

    chosen, rejected = [], []
    for _ in range(n_pairs):
        prompt = rng.choice(prompts)
        chosen.append((prompt, answer(rng.choice(emotional))))
        rejected.append((prompt, answer(rng.choice(others))))
    return chosen, rejected


def learn_direction(
    model: torch.nn.Module, chosen: Sequence[Pair], rejected: Sequence[Pair], layers: Sequence[int],
    lengths: Sequence[float], init: np.ndarray, settings: LearnSettings, *, pad_id: int, seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A unit direction ``[hidden]`` and a summary: ``init`` moved to lower the preference loss.

    ``lengths[i]`` is the push length at ``layers[i]`` (the direction is normalized before it is
    scaled). ``steps=0`` returns ``init`` normalized.
    """
    settings.check()
    norm = float(np.linalg.norm(init))
    if not np.isfinite(norm) or norm == 0:
        raise ExtractError("a learned direction needs a starting direction of non-zero length")
    param = next(model.parameters())
    direction = torch.nn.Parameter(torch.tensor(init / norm, dtype=torch.float32, device=param.device))
    scale = torch.tensor(list(lengths), dtype=torch.float32, device=param.device)[:, None]
    rng = random.Random(seed)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    history: list[float] = []
    began = time.perf_counter()
    try:
        with torch.no_grad():
            reference = torch.cat([
                answer_logprob(model, [*chosen[i:i + settings.batch], *rejected[i:i + settings.batch]], pad_id)
                .view(2, -1).T for i in range(0, len(chosen), settings.batch)])  # [n_pairs, 2]
        optimizer = torch.optim.Adam([direction], lr=settings.lr)
        for _ in range(settings.steps):
            rows = rng.sample(range(len(chosen)), settings.batch)
            vectors = (direction / direction.norm())[None].to(param.dtype) * scale.to(param.dtype)
            with torch.enable_grad(), push(model, layers, vectors):
                steered = answer_logprob(model, [chosen[r] for r in rows] + [rejected[r] for r in rows], pad_id)
            gain = steered.view(2, -1).T - reference[rows]  # [batch, 2]: emotional, other
            loss = (-F.logsigmoid(settings.beta * (gain[:, 0] - gain[:, 1])).mean()
                    + settings.fluency_weight * torch.relu(-gain[:, 0]).mean())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))
            if progress is not None and (len(history) % 20 == 0 or len(history) == settings.steps):
                progress(f"step {len(history)}/{settings.steps}: loss {history[-1]:.4f}")
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    unit = direction.detach().float().cpu().numpy().astype(np.float64)
    unit /= np.linalg.norm(unit)
    info = {"loss_first": round(history[0], 5) if history else None,
            "loss_last": round(history[-1], 5) if history else None,
            "cos_to_start": round(float(unit @ (init / norm)), 5), "seconds": round(time.perf_counter() - began, 2)}
    return unit.astype(np.float32), info


def learned_vectors(
    model: torch.nn.Module, tokenizer: Any, emotions: Sequence[str], texts: dict[str, list[str]], turns: Sequence[str],
    search: Sequence[int], start: np.ndarray, residual_norm: np.ndarray, window: Sequence[int],
    settings: LearnSettings, *, seed: int = 0, progress: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``[n_emotions, len(search), hidden]``: each emotion's learned direction at every searched layer.

    ``start`` is ``[n_emotions, len(search), hidden]`` (mean-difference vectors): the starting
    direction is the mean of its unit vectors over ``window``, and the learned direction takes the
    start vector's length at each layer, so raw alphas mean what they meant for the start.
    ``texts`` maps each emotion and ``neutral`` to answer texts; an emotion's other side is every
    other emotion's texts and the neutral ones.
    """
    check_window(window, search)
    rows = [list(search).index(layer) for layer in window]
    lengths = [settings.alpha * NORMALIZED_FRACTION * float(residual_norm[r]) for r in rows]
    pad = pad_token_id(tokenizer)
    out = np.empty_like(start, dtype=np.float32)
    info: dict[str, Any] = {"window": list(window), "per_emotion": {}}
    for e, emotion in enumerate(emotions):
        others = [t for name, pool in texts.items() if name != emotion for t in pool]
        rng = random.Random(f"{seed}-{emotion}")
        chosen, rejected = preference_pairs(tokenizer, turns, texts[emotion], others, settings.pairs,
                                            settings.max_answer_tokens, rng)
        units = start[e, rows].astype(np.float64)
        units /= np.linalg.norm(units, axis=1, keepdims=True)
        tell = None if progress is None else (lambda text, name=emotion: progress(f"learned {name}: {text}"))
        unit, summary = learn_direction(model, chosen, rejected, window, lengths, units.sum(axis=0), settings,
                                        pad_id=pad, seed=rng.randrange(2**31), progress=tell)
        out[e] = unit[None, :] * np.linalg.norm(start[e], axis=1, keepdims=True)
        info["per_emotion"][emotion] = {**summary, "n_texts": len(texts[emotion]), "n_others": len(others)}
    return out, info
