"""How evaluation prompts reach a model: as a chat turn, or as a text the model continues.

A model with a chat template (SmolLM2-Instruct, Qwen3) is evaluated on user turns rendered by its
template (``chat``). A model without one (a base model such as Gemma 3 270M) has no turns to answer:
it is evaluated on neutral story openings that it continues (``continuation``), tokenized the way
``/v1/completions`` tokenizes a prompt (with the tokenizer's own special tokens, e.g. Gemma's ``<bos>``).
``auto`` picks ``chat`` exactly when the tokenizer has a template. Each style has its own disjoint
tuning and held-out sets (``emolab/data/steering/prompts_*.txt``) and its own demo prompt.
"""

from __future__ import annotations

from typing import Any

from emolab.core.errors import EmolabError

__all__ = ["DEMO_PROMPTS", "PROMPT_STYLES", "PromptError", "demo_prompt", "encode_prompts", "has_chat_template",
           "prompt_file", "resolve_style", "stage_prompts"]

PROMPT_STYLES = ("auto", "chat", "continuation")
DEMO_PROMPTS = {
    "chat": "Describe your morning in two sentences.",  # emolab test-http's prompt
    "continuation": "This morning I got up, opened the curtains and",
}
_SETS = {("chat", "tune"): "tune", ("chat", "heldout"): "heldout",
         ("continuation", "tune"): "continue_tune", ("continuation", "heldout"): "continue_heldout"}


class PromptError(EmolabError, ValueError):
    """A prompt style that cannot work with this model."""


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_style(style: str, tokenizer: Any) -> str:
    """``chat`` or ``continuation``; ``auto`` is ``chat`` when the tokenizer has a chat template."""
    if style not in PROMPT_STYLES:
        raise PromptError(f"unknown prompt style {style!r}; choose from {list(PROMPT_STYLES)}", setting="prompt_style")
    if style == "auto":
        return "chat" if has_chat_template(tokenizer) else "continuation"
    if style == "chat" and not has_chat_template(tokenizer):
        raise PromptError("this model's tokenizer has no chat template (a base model): evaluate it with "
                          "continuation prompts", setting="prompt_style")
    return style


def encode_prompts(tokenizer: Any, prompts: list[str], style: str) -> list[list[int]]:
    """Token ids as the servers build them: the chat template's text (``chat``), or the prompt with the
    tokenizer's special tokens, as ``/v1/completions`` does (``continuation``)."""
    if style == "chat":
        from emolab.core.models import chat_prompt_ids

        return [chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}]) for prompt in prompts]
    if style == "continuation":
        return [list(tokenizer(prompt).input_ids) for prompt in prompts]
    raise PromptError(f"resolve the prompt style first (got {style!r})", setting="prompt_style")


def prompt_file(style: str, stage: str) -> str:
    """The package file of a style's ``tune`` or ``heldout`` prompts."""
    return f"emolab/data/steering/prompts_{_SETS[(style, stage)]}.txt"


def stage_prompts(style: str, stage: str) -> list[str]:
    """The ``tune`` (every choice is made on these) or ``heldout`` (only reported) prompts of a style."""
    from emolab.extraction.prompts import read_prompts

    return read_prompts(_SETS[(style, stage)])


def demo_prompt(style: str) -> str:
    return DEMO_PROMPTS[style]
