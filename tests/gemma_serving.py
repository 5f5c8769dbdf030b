"""What the Gemma 3 270M serving tests share (HF backend in tests/serve, vLLM in tests/fastpath): the reference
steered greedy by hand-made hooks, a user-given chat template, and the checks both backends must pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openai
import pytest
from conftest import hooked_greedy

from emolab.core.bundle import EmotionBundle
from emolab.core.models import chat_prompt_ids

__all__ = ["ALPHA", "EMOTION", "N_TOKENS", "PROMPT", "TEMPLATE", "USER", "check_chat_refused", "check_chat_with_template",
           "check_completions", "greedy", "write_template"]

N_TOKENS = 12
PROMPT = "This morning I got up, opened the curtains and"
USER = [{"role": "user", "content": "What did you do this morning?"}]
EMOTION, ALPHA = "joy", 0.5  # on the bundle's normalized scale (recommended: 0.21); a power of two keeps alpha x v exact
# A user-given template in Gemma's habit: it writes <bos> itself, since a rendered chat is tokenized
# without special tokens (by vLLM and by emolab alike), so the prompt holds exactly one <bos>.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


def write_template(folder: Path) -> Path:
    path = folder / "turns.jinja"
    path.write_text(TEMPLATE)
    return path


def greedy(model, tokenizer, ids: list[int], bundle: EmotionBundle | None = None) -> tuple[str, list[int]]:
    """Plain ``model.generate`` greedy; with ``bundle``, hooks add ALPHA x its EMOTION basis row at each layer."""
    deltas = None
    if bundle is not None:
        basis = bundle.steering_basis(bundle.resolve_alpha_scale(None))  # [layers, emotions, hidden]
        deltas = {layer: np.float32(ALPHA) * basis[k, bundle.id_map[EMOTION]]
                  for k, layer in enumerate(bundle.chosen_layers)}
    return hooked_greedy(model, tokenizer, ids, N_TOKENS, deltas)


def check_completions(client: openai.OpenAI, model_name: str, reference, bundle: EmotionBundle) -> None:
    """/v1/completions: one <bos> in the prompt, unsteered == plain greedy, steered == the hand-made hooks."""
    model, tokenizer = reference
    ids = tokenizer(PROMPT).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    plain_text, plain_ids = greedy(model, tokenizer, ids)
    steered_text, steered_ids = greedy(model, tokenizer, ids, bundle)
    assert steered_text != plain_text  # the steering is strong enough to matter
    for steering, text, generated in ((None, plain_text, plain_ids), ([EMOTION, ALPHA], steered_text, steered_ids)):
        extra = {"vllm_xargs": {"steering": steering}} if steering else None
        reply = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0,
                                          extra_body=extra)
        assert reply.choices[0].text == text
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(ids), len(generated))


def check_chat_refused(client: openai.OpenAI, model_name: str) -> None:
    """A chat request to a model without a chat template: a 400 that names the problem and the way out."""
    for steering in (None, [EMOTION, ALPHA]):
        extra = {"vllm_xargs": {"steering": steering}} if steering else None
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=model_name, messages=USER, max_tokens=4, extra_body=extra)
        error = info.value.body if isinstance(info.value.body, dict) else {}
        error = error.get("error", error)
        assert "no chat template" in error["message"] and "/v1/completions" in error["message"], error
        assert "--chat-template" in error["message"] and error["param"] == "messages"


def check_chat_with_template(client: openai.OpenAI, model_name: str, reference, bundle: EmotionBundle) -> None:
    """With the user's template: one <bos>, unsteered == plain greedy, steered == the hand-made hooks."""
    model, tokenizer = reference
    templated = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    templated.chat_template = TEMPLATE
    ids = chat_prompt_ids(templated, USER)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    for steered in (False, True):
        text, generated = greedy(model, tokenizer, ids, bundle if steered else None)
        extra = {"vllm_xargs": {"steering": [EMOTION, ALPHA]}} if steered else None
        reply = client.chat.completions.create(model=model_name, messages=USER, max_tokens=N_TOKENS, temperature=0,
                                               extra_body=extra)
        assert reply.choices[0].message.content == text
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(ids), len(generated))
