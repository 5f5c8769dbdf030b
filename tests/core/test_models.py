"""Model aliases, tiny random builders, device/dtype choice and block lookup."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from emolab.core.models import (
    ModelError,
    decoder_layers,
    load_model,
    pad_token_id,
    pick_device,
    pick_dtype,
    resolve_model,
)
from emolab.core.offline import QWEN3_8B_DIR, tiny_qwen3_config


def test_tiny_qwen3_config_is_qwen3_8b_shrunk():
    full = json.loads((QWEN3_8B_DIR / "config.json").read_text())
    assert (full["num_hidden_layers"], full["hidden_size"], full["head_dim"]) == (36, 4096, 128)
    tiny = tiny_qwen3_config()
    assert tiny.model_type == "qwen3"
    assert tiny.head_dim >= 32  # vLLM-CPU attention kernels need it
    assert tiny.num_hidden_layers == 4 and tiny.hidden_size == 128
    assert tiny.num_attention_heads * tiny.head_dim == tiny.hidden_size
    # What is not shrunk comes from Qwen3-8B.
    assert tiny.vocab_size == full["vocab_size"]
    assert tiny.rms_norm_eps == full["rms_norm_eps"]
    assert tiny.hidden_act == full["hidden_act"]
    assert tiny_qwen3_config(num_hidden_layers=7).num_hidden_layers == 7


def test_tiny_qwen3_folder_loads(tiny_qwen3_path):
    model, tokenizer = load_model(str(tiny_qwen3_path), device="cpu")
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert len(decoder_layers(model)) == 4
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token is not None
    assert not model.training


def test_tiny_llama_folder_loads(tiny_llama_path):
    model, tokenizer = load_model(str(tiny_llama_path), dtype="float32", device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(decoder_layers(model)) == 4 and model.config.head_dim == 32
    assert tokenizer.pad_token is not None


@pytest.mark.slow
def test_smollm2_is_a_plain_llama(smollm2_path):
    config = json.loads((smollm2_path / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (config["num_hidden_layers"], config["hidden_size"]) == (30, 576)
    assert not list(smollm2_path.glob("*.gguf"))
    assert resolve_model("smollm2") == str(smollm2_path)


def test_resolve_model_passes_other_names_through(tmp_path):
    assert resolve_model("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_build_is_idempotent(tiny_qwen3_path):
    stamp = (tiny_qwen3_path / "config.json").stat().st_mtime_ns
    assert resolve_model("tiny-qwen3") == str(tiny_qwen3_path)
    assert (tiny_qwen3_path / "config.json").stat().st_mtime_ns == stamp


def test_device_and_dtype_choice():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelError, match="not a torch device"):
        pick_device("gpu0")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ModelError, match="unknown dtype"):
        pick_dtype("fp8", torch.device("cpu"))


def test_decoder_layers_refuses_unknown_models():
    with pytest.raises(ModelError, match="decoder blocks"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_pad_token_id_falls_back_to_end_of_sequence():
    assert pad_token_id(SimpleNamespace(pad_token_id=3, eos_token_id=7)) == 3
    assert pad_token_id(SimpleNamespace(pad_token_id=0, eos_token_id=7)) == 0  # id 0 is a pad id, not "none"
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=7)) == 7
