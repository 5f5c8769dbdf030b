"""The HF batch's settings: a bad flag is argparse's one error line naming it, the settings' own checks, and ``--load-format dummy``."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli

from emolab.core.models import ModelError, load_model
from emolab.serve.settings import DEFAULT_HF_MAX_BATCH, DEFAULT_HF_MAX_BATCH_TOKENS, ServeSettings, SettingsError


@pytest.mark.parametrize("flag", ["--hf-max-batch", "--hf-max-batch-tokens"])
def test_a_batch_limit_below_one_is_one_error_line_naming_the_flag(flag, smollm2_bundle_path, capsys):
    code, _, err = run_cli(["serve", "--vectors", str(smollm2_bundle_path), "--model", "smollm2", "--backend", "hf",
                            flag, "0"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == f"emolab serve: error: argument {flag}: {flag} must be at least 1, got 0"


def test_settings_bound_the_batch(smollm2_bundle_path):
    settings = ServeSettings(vectors=str(smollm2_bundle_path))
    assert (settings.hf_max_batch, settings.hf_max_batch_tokens) == (DEFAULT_HF_MAX_BATCH, DEFAULT_HF_MAX_BATCH_TOKENS)
    for field in ("hf_max_batch", "hf_max_batch_tokens"):
        with pytest.raises(SettingsError) as info:
            ServeSettings(vectors=str(smollm2_bundle_path), **{field: 0})
        assert info.value.setting == field


def test_dummy_weights_have_the_models_shape_and_are_the_same_every_time(tiny_llama_path):
    real, _ = load_model(str(tiny_llama_path), dtype="float32", device="cpu")
    first, tokenizer = load_model(str(tiny_llama_path), dtype="bfloat16", device="cpu", load_format="dummy")
    second, _ = load_model(str(tiny_llama_path), dtype="bfloat16", device="cpu", load_format="dummy")
    shapes = {name: p.shape for name, p in real.named_parameters()}
    assert {name: p.shape for name, p in first.named_parameters()} == shapes
    assert all(p.dtype == torch.bfloat16 for p in first.parameters())
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True))
    weight = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(dict(first.named_parameters())[weight].float(), dict(real.named_parameters())[weight])
    assert tokenizer.pad_token is not None
    with pytest.raises(ModelError, match="unknown load format"):
        load_model(str(tiny_llama_path), load_format="random")
