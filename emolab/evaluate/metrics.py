"""Metrics of steered continuations: judge-independent text statistics, perplexity, intervals, alpha choice.

``words``/``distinct_n``/``is_degenerate`` read the text alone; ``continuation_perplexity`` scores a
continuation under the *unsteered* model; ``bootstrap_ci`` gives 95% intervals of paired shifts;
``recommend_alpha`` applies the fluency limits.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = [
    "bootstrap_ci", "bootstrap_ratio_ci", "continuation_perplexity", "distinct_n", "ends_with_question", "is_degenerate", "ngrams",
    "recommend_alpha", "repeated_fraction", "words",
]

WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks (so ``!!!!`` counts as four repeats)."""
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: list[str], n: int) -> float:
    """Unique n-grams / all n-grams; 0.0 when the text has no n-gram at all."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_fraction(tokens: list[str], n: int = 4) -> float:
    """Share of n-grams that repeat an earlier one (``1 - distinct_n``; 0.0 for texts under n words)."""
    grams = ngrams(tokens, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def is_degenerate(tokens: list[str], n: int = 4, max_repeated: float = 0.3, min_words: int = 3) -> bool:
    """Degenerate: under ``min_words`` words, or more than ``max_repeated`` of its word 4-grams repeats.

    Fluent 40-token answers almost never repeat a 4-gram; a steered model that loops
    (``so sad so sad so sad ...``) repeats most of them.
    """
    return len(tokens) < min_words or repeated_fraction(tokens, n) > max_repeated


def continuation_perplexity(
    model, prompt_ids: list[list[int]], continuation_ids: list[list[int]], batch_size: int = 16,
) -> list[float]:
    """``exp(mean NLL)`` of each continuation given its prompt, under ``model`` as it is (unsteered).

    Rows are right-padded: real tokens keep positions 0..n-1 and never attend to the padding.
    An empty continuation gets ``nan``. Where rows share a prompt (every condition of an eval grid
    does) the prompt is run once and its cache reused for each batch of continuations.
    """
    import torch

    device = next(model.parameters()).device
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    # The LM head only where a continuation token is predicted: the full [rows, width, vocab] logits cost
    # as much as the rest of the forward. Models that post-process logits (soft-capping) take the full path.
    stack = getattr(model, "base_model", None)
    fast = head is not None and stack is not None and stack is not model and \
        not getattr(model.config, "final_logit_softcapping", None)
    if fast and len({tuple(p) for p in prompt_ids}) < len(prompt_ids) and all(len(p) > 1 for p in prompt_ids):
        return _shared_prompt_perplexity(stack, head, prompt_ids, continuation_ids, batch_size)
    out: list[float] = []
    for start in range(0, len(prompt_ids), batch_size):
        prompts = prompt_ids[start:start + batch_size]
        conts = continuation_ids[start:start + batch_size]
        seqs = [list(p) + list(c) for p, c in zip(prompts, conts, strict=True)]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        rows = [row for row, c in enumerate(conts) if c]
        if not rows:
            out.extend(float("nan") for _ in conts)
            continue
        # logits at position t predict token t+1
        where = [(row, t) for row in rows for t in range(len(prompts[row]) - 1, len(prompts[row]) + len(conts[row]) - 1)]
        targets = torch.tensor([seqs[row][t + 1] for row, t in where], dtype=torch.long)
        with torch.inference_mode():
            if fast:
                hidden = stack(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
                picked = hidden[torch.tensor([r for r, _ in where]), torch.tensor([t for _, t in where])]
                logits = head(picked).float().cpu()
            else:
                full = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
                logits = full[torch.tensor([r for r, _ in where]), torch.tensor([t for _, t in where])]
        nll = -torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0].double()
        offset = 0
        for c in conts:
            if not c:
                out.append(float("nan"))
                continue
            out.append(float(torch.exp(nll[offset:offset + len(c)].mean())))
            offset += len(c)
    return out


def _shared_prompt_perplexity(stack, head, prompt_ids, continuation_ids, batch_size: int) -> list[float]:
    """``continuation_perplexity`` for rows grouped by prompt: the prompt (but its last token) runs once."""
    import copy

    import torch

    device = next(stack.parameters()).device
    out = [float("nan")] * len(prompt_ids)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, prompt in enumerate(prompt_ids):
        if continuation_ids[i]:
            groups.setdefault(tuple(prompt), []).append(i)
    for prompt, rows in groups.items():
        with torch.inference_mode():
            cache = stack(input_ids=torch.tensor([prompt[:-1]], device=device), use_cache=True).past_key_values
        n_cached = len(prompt) - 1
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            seqs = [[prompt[-1], *continuation_ids[i]] for i in chunk]  # the last prompt token predicts the first
            width = max(len(s) for s in seqs)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), n_cached + width), dtype=torch.long)
            mask[:, :n_cached] = 1
            for row, seq in enumerate(seqs):
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, n_cached:n_cached + len(seq)] = 1
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(chunk))
            where = [(row, t) for row, seq in enumerate(seqs) for t in range(len(seq) - 1)]
            targets = torch.tensor([seqs[row][t + 1] for row, t in where], dtype=torch.long)
            with torch.inference_mode():
                hidden = stack(input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=past,
                               use_cache=True).last_hidden_state
                picked = hidden[torch.tensor([r for r, _ in where]), torch.tensor([t for _, t in where])]
                logits = head(picked).float().cpu()
            nll = -torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0].double()
            offset = 0
            for row, i in enumerate(chunk):
                n = len(seqs[row]) - 1
                out[i] = float(torch.exp(nll[offset:offset + n].mean()))
                offset += n
    return out


def recommend_alpha(
    alphas: list[float], ppl: list[float], degenerate: list[float], baseline_ppl: float, baseline_degenerate: float,
    ppl_factor: float = 2.0, degenerate_tolerance: float = 0.1,
) -> float | None:
    """The largest positive alpha such that it and every smaller positive alpha stay fluent.

    Fluent: median perplexity at most ``ppl_factor`` x the baseline's, and a degenerate-continuation
    rate at most ``degenerate_tolerance`` above the baseline's. ``None`` if even the smallest fails.
    """
    best = None
    for alpha, p, d in sorted(zip(alphas, ppl, degenerate, strict=True)):
        if alpha <= 0:
            continue
        if not (p <= ppl_factor * baseline_ppl and d <= baseline_degenerate + degenerate_tolerance):
            break
        best = float(alpha)
    return best


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def bootstrap_ratio_ci(numerator: np.ndarray, denominator: np.ndarray, n_boot: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``sum(numerator) / sum(denominator)``, pairs resampled together."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(numerator), size=(n_boot, len(numerator)))
    ratios = numerator[picks].sum(axis=1) / denominator[picks].sum(axis=1)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def ends_with_question(text: str) -> bool:
    """Whether a continuation ends in a question mark (quotes and brackets after it ignored).

    The judge reads questions as surprise (GoEmotions' surprise group is mostly curiosity and
    confusion), so a surprise vector that only turns replies into questions would look like it works.
    """
    return text.rstrip().rstrip("\"'”’)]*").endswith("?")
