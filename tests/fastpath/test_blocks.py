"""Finding a vLLM model's decoder blocks and reading how each returns its output (no engine is started):
on the block classes of the installed vLLM, on transformers' own blocks (vLLM's Transformers backend),
and on blocks written here for the layouts no installed class has."""

from __future__ import annotations

import importlib

import pytest
import torch

from emolab.fastpath.adapters.blocks import BlockPlan, UnsupportedModel, block_layout, find_blocks

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


def vllm_block(module: str, name: str) -> type:
    return getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), name)


@pytest.mark.parametrize(("module", "name", "layout"), [
    ("llama", "LlamaDecoderLayer", "pair"),
    ("qwen3", "Qwen3DecoderLayer", "pair"),
    ("gemma3", "Gemma3DecoderLayer", "pair"),  # post-norms inside the block, then (hidden, residual)
    ("mixtral", "MixtralDecoderLayer", "pair"),  # annotated `-> torch.Tensor`, returns the pair: the source decides
    ("qwen3_moe", "Qwen3MoeDecoderLayer", "pair"),
    ("granite", "GraniteDecoderLayer", "tensor"),  # annotated as a tuple, returns one tensor
    ("falcon", "FalconDecoderLayer", "tensor"),
    ("minicpm", "MiniCPMDecoderLayer", "first"),  # takes the residual, hands back (output, None)
    ("stablelm", "StablelmDecoderLayer", "first"),  # (output, residual) that its model drops
])
def test_the_layout_is_read_from_the_block_class(module, name, layout):
    assert block_layout(vllm_block(module, name), "Arch") == layout


@pytest.mark.parametrize(("module", "name", "extra"), [
    ("gemma3n", "Gemma3nDecoderLayer", "per_layer_input"),
    ("iquest_loopcoder", "LoopCoderDecoderLayer", "loop_idx"),
    ("whisper", "WhisperDecoderLayer", "encoder_hidden_states"),
])
def test_blocks_that_take_more_than_the_residual_stream_are_refused(module, name, extra):
    with pytest.raises(UnsupportedModel, match=extra) as refused:
        block_layout(vllm_block(module, name), "SomeForCausalLM")
    assert str(refused.value).startswith(f"SomeForCausalLM: its decoder block {name} takes")
    assert "\n" not in str(refused.value)


def test_transformers_blocks_are_read_from_their_annotation():
    from transformers.models.olmo2.modeling_olmo2 import Olmo2DecoderLayer

    assert block_layout(Olmo2DecoderLayer, "Olmo2ForCausalLM") == "tensor"  # transformers 5: the output alone

    class Transformers4Layer(torch.nn.Module):  # transformers 4 blocks: a tuple led by the output
        def forward(self, hidden_states, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor | None]:
            return hidden_states, None

    Transformers4Layer.__module__ = "transformers.models.old.modeling_old"
    assert block_layout(Transformers4Layer, "OldForCausalLM") == "first"


class Mixed(torch.nn.Module):
    def forward(self, positions, hidden_states, residual):
        if residual is None:
            return hidden_states
        return hidden_states, residual


class Triple(torch.nn.Module):
    def forward(self, positions, hidden_states, residual):
        return hidden_states, residual, positions


@pytest.mark.parametrize("block", [Mixed, Triple])
def test_returns_that_fit_no_layout_are_refused(block):
    with pytest.raises(UnsupportedModel, match="not one of the layouts emolab knows"):
        block_layout(block, "OddForCausalLM")


def test_find_blocks_keeps_pipeline_placeholders_and_plans_the_rest(tiny_llama_path):
    from vllm.model_executor.models.utils import PPMissingLayer

    from emolab.core.models import load_model

    model = load_model(str(tiny_llama_path), dtype="float32", device="cpu")[0]
    model.model.layers[3] = PPMissingLayer()  # the last block runs on another pipeline rank
    plan = find_blocks(model, "LlamaForCausalLM", 4)
    assert isinstance(plan, BlockPlan) and plan.layouts == ["tensor", "tensor", "tensor", None]
    assert plan.proven and "LlamaDecoderLayer returns one tensor" in plan.describe()
    assert "not a family" in find_blocks(model, "CustomForCausalLM", 4).describe()


def test_find_blocks_refuses_a_model_without_decoder_blocks():
    with pytest.raises(UnsupportedModel, match="cannot find its 4 decoder blocks"):
        find_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)), "NoBlocksForCausalLM", 4)
