"""Prompt styles: chat turns for models with a chat template, texts to continue for models without one (base
models such as Gemma 3 270M), with disjoint tuning and held-out sets, in eval and tune alike."""

from __future__ import annotations

import json
import shutil

import pytest

from emolab.evaluate.prompting import (
    DEMO_PROMPTS,
    PromptError,
    encode_prompts,
    prompt_file,
    resolve_style,
    stage_prompts,
)


@pytest.fixture(scope="module")
def tokenizers(tiny_llama_path):
    from transformers import AutoTokenizer

    chat = AutoTokenizer.from_pretrained(tiny_llama_path)
    base = AutoTokenizer.from_pretrained(tiny_llama_path)
    base.chat_template = None  # the same tokenizer as a base model's: no template
    return chat, base


def test_auto_picks_chat_only_with_a_template(tokenizers):
    chat, base = tokenizers
    assert resolve_style("auto", chat) == "chat" and resolve_style("auto", base) == "continuation"
    assert resolve_style("continuation", chat) == "continuation"  # a chat model may be evaluated on texts too
    with pytest.raises(PromptError, match="no chat template") as info:
        resolve_style("chat", base)
    assert info.value.setting == "prompt_style"
    with pytest.raises(PromptError, match="unknown prompt style"):
        resolve_style("story", chat)


def test_continuation_prompts_are_the_completion_routes_tokens(tokenizers):
    from emolab.core.models import chat_prompt_ids

    chat, base = tokenizers
    texts = ["The bus was late today, so I", "On Sunday we"]
    assert encode_prompts(base, texts, "continuation") == [base(t).input_ids for t in texts]
    assert encode_prompts(chat, texts, "chat") == [chat_prompt_ids(chat, [{"role": "user", "content": t}]) for t in texts]


def test_each_style_has_disjoint_tuning_and_heldout_sets():
    for style in ("chat", "continuation"):
        tune, heldout = stage_prompts(style, "tune"), stage_prompts(style, "heldout")
        assert len(tune) == len(heldout) == 48
        assert len(set(tune)) == 48 and len(set(heldout)) == 48 and not set(tune) & set(heldout)
        assert DEMO_PROMPTS[style] not in tune + heldout
        assert prompt_file(style, "heldout").endswith(".txt")
    assert set(stage_prompts("continuation", "tune")).isdisjoint(stage_prompts("chat", "tune"))
    # Texts to continue end mid-sentence (no full stop, no question): the model writes the rest.
    assert not [p for p in stage_prompts("continuation", "tune") + stage_prompts("continuation", "heldout")
                if p.endswith((".", "?", "!"))]


@pytest.mark.slow
def test_eval_cli_on_a_base_model_continues_texts(gemma3_path, gemma3_bundle_path, tmp_path, capsys):
    import torch

    from emolab.cli import main
    from emolab.core.models import load_model

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(gemma3_bundle_path, bundle_dir)
    out = tmp_path / "out"
    rc = main(["eval", "--model", "gemma3-270m", "--bundle", str(bundle_dir), "--emotions", "joy", "--alphas", "2",
               "--prompts", "2", "--max-new-tokens", "8", "--judge-train-per-class", "60",
               "--judge-test-per-class", "20", "--output", str(out), "--no-plots"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["prompt_style"] == "continuation" and report["config"]["prompt_style"] == "continuation"
    prompts = stage_prompts("continuation", "tune")[:2]
    assert report["config"]["prompts"] == prompts
    # The baseline is plain greedy decoding of the prompt as /v1/completions tokenizes it (one <bos>).
    model, tokenizer = load_model("gemma3-270m")
    ids = tokenizer(prompts[0]).input_ids
    assert ids.count(tokenizer.bos_token_id) == 1
    with torch.no_grad():
        plain = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):]
    assert report["conditions"][0]["texts"][0] == tokenizer.decode(plain, skip_special_tokens=True)
    capsys.readouterr()
    # The base model cannot be evaluated on chat turns: one error line naming the flag.
    assert main(["eval", "--model", "gemma3-270m", "--bundle", str(bundle_dir), "--prompt-style", "chat",
                 "--output", str(tmp_path / "chat")]) == 2
    assert "error: --prompt-style: this model's tokenizer has no chat template" in capsys.readouterr().err
