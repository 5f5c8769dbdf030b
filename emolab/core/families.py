"""The decoder-only families whose vLLM fast path emolab's tests prove exact, and their tiny test models.

This table is the single source of truth for "proven": ``tests/fastpath/test_families.py`` runs every
family in it on a real vLLM engine (a tiny random model of the family's real architecture, built
offline by ``emolab.core.offline.build_tiny_family``), the README's family table is checked against
it, and the vLLM plugin says at start-up whether the model it steers is one of them. The fast path
itself is not limited to these: it steers any model whose decoder blocks it can find and hook
(``emolab.fastpath.adapters.find_blocks``).

Every tiny model has 4 blocks of width 128 (4 heads of 32, 2 KV heads: vLLM-CPU attention needs a
head size of at least 32), so one bundle of vectors fits all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FAMILIES", "Family", "TINY_SHAPE", "family", "proven_architectures"]

# The shape every tiny family model shares (what a test bundle must fit).
TINY_SHAPE: Mapping[str, Any] = {
    "num_hidden_layers": 4, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 4096, "tie_word_embeddings": False,
}
_SLIDING = 32  # a window shorter than the tests' long prompts, so windowed layers really window


@dataclass(frozen=True)
class Family:
    """One model family: its architecture as ``config.json`` names it, and how its tiny model is made."""

    name: str
    architecture: str  # config.architectures[0]: the class transformers builds and vLLM's registry resolves
    config_class: str  # the transformers config class its tiny model is built from
    tokenizer: str  # "qwen3" (the Qwen3-8B tokenizer in emolab/assets) or "smollm2"
    what: str  # what about the family the fast path must get right
    settings: Mapping[str, Any] = field(default_factory=dict)  # config fields beyond TINY_SHAPE
    layout: str = "pair"  # how its vLLM block returns its output (emolab.fastpath.adapters.blocks.LAYOUTS)
    # The random init (emolab.core.offline): spread of the embeddings and of the other matrices, and noise
    # added to vectors (norm gains, biases). Gemma scales its embeddings by sqrt(hidden), ties them to the
    # output head and norms every sub-block's output: with the usual init each token predicts itself or
    # one token repeats; these give varied greedy text, which makes the exactness checks sharp.
    embed_std: float = 0.2
    weight_std: float = 0.08
    vector_noise: float = 0.0


FAMILIES: tuple[Family, ...] = (
    Family("llama", "LlamaForCausalLM", "LlamaConfig", "smollm2", "the reference layout"),
    Family("qwen2", "Qwen2ForCausalLM", "Qwen2Config", "qwen3", "q/k/v biases"),
    Family("qwen3", "Qwen3ForCausalLM", "Qwen3Config", "qwen3", "q/k norms"),
    Family("mistral", "MistralForCausalLM", "MistralConfig", "smollm2", "sliding-window attention",
           {"sliding_window": _SLIDING}),
    Family("gemma2", "Gemma2ForCausalLM", "Gemma2Config", "smollm2",
           "scaled embeddings, post-norms inside the block, logit soft-capping, alternating sliding windows, tied "
           "embeddings",
           {"sliding_window": _SLIDING, "query_pre_attn_scalar": 32, "tie_word_embeddings": True,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
            "layer_types": ["sliding_attention", "full_attention"] * 2},
           embed_std=0.02, weight_std=0.4, vector_noise=1.0),
    Family("gemma3", "Gemma3ForCausalLM", "Gemma3TextConfig", "smollm2",
           "text-only Gemma 3 (gemma3_text): scaled embeddings, post-norms, q/k norms, local and global RoPE, "
           "sliding windows, tied embeddings",
           {"sliding_window": _SLIDING, "query_pre_attn_scalar": 32, "tie_word_embeddings": True,
            "layer_types": ["sliding_attention"] * 3 + ["full_attention"]},
           embed_std=0.02, weight_std=0.4, vector_noise=1.0),
    Family("phi3", "Phi3ForCausalLM", "Phi3Config", "smollm2", "fused qkv and gate/up weights",
           {"original_max_position_embeddings": 4096}),
    Family("olmo2", "Olmo2ForCausalLM", "Olmo2Config", "smollm2",
           "norms after attention and MLP, q/k norms; vLLM 0.32 runs it on its Transformers backend "
           "(transformers' own blocks)", layout="tensor"),
    Family("granite", "GraniteForCausalLM", "GraniteConfig", "smollm2",
           "embedding, residual, attention and logit multipliers",
           {"embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 1 / 32,
            "logits_scaling": 8.0}, layout="tensor"),
    Family("mixtral", "MixtralForCausalLM", "MixtralConfig", "smollm2", "mixture of experts (4 experts, top 2)",
           {"num_local_experts": 4, "num_experts_per_tok": 2}),
    Family("qwen3_moe", "Qwen3MoeForCausalLM", "Qwen3MoeConfig", "qwen3",
           "mixture of experts (4 experts, top 2, normalised top-k), q/k norms",
           {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64, "decoder_sparse_step": 1,
            "mlp_only_layers": [], "norm_topk_prob": True}),
)


def family(name: str) -> Family:
    for entry in FAMILIES:
        if entry.name == name:
            return entry
    raise KeyError(f"no family {name!r}; known: {', '.join(f.name for f in FAMILIES)}")


def proven_architectures() -> tuple[str, ...]:
    return tuple(f.architecture for f in FAMILIES)
