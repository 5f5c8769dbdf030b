"""vLLM's decoder blocks: where a vLLM model keeps them, and how each hands back its output.

The steering contract adds a vector to the output of decoder block L (transformers' ``hidden_states[L+1]``,
before the final norm). A vLLM block hands that output back in one of three layouts, read once from the
block's class (its forward's inputs and return statements; for transformers' own blocks, which vLLM's
Transformers backend runs, its return annotation), never per call:

* ``pair``: ``forward(positions, hidden_states, residual) -> (hidden_states, residual)``. The block output
  is their sum (the next block's fused add + norm, or the final norm, adds them), so the vector goes into
  the residual. Llama, Qwen2/3, Mistral, Phi-3, Mixtral, Qwen3-MoE; Gemma 2/3 too, whose post-attention
  and post-feed-forward norms are applied to ``hidden_states`` inside the block, before that sum.
* ``tensor``: ``forward(positions, hidden_states) -> hidden_states``, the whole output (Granite, which
  applies its residual multiplier inside the block; OLMo 2; transformers' own blocks since transformers 5).
* ``first``: a tuple whose first item is the whole output: ``(hidden_states, None)`` from a block that
  takes the residual (MiniCPM), ``(output, residual)`` from one that does not (StableLM: its model drops
  the second), or a transformers block of transformers 4.

A block that takes more than the residual stream (``per_layer_input``, a loop index, encoder states, ...)
or whose returns do not fit one layout is refused with one line naming the architecture and why. Which
families are *proven* exact is ``emolab.core.families`` (the tests); the rules here hold for any family.

``probe_path`` answers the same question before vLLM starts: it builds the model on the meta device (no
weights, no memory) and runs ``find_blocks`` on it, in a subprocess (``check_model``), so ``emolab serve``
decides before vLLM starts exactly as the plugin decides when the weights load.
"""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

import torch

from emolab.core.errors import EmolabError
from emolab.core.families import proven_architectures
from emolab.core.models import DECODER_LAYER_PATHS
from emolab.fastpath.adapters import is_missing_layer

__all__ = ["LAYOUTS", "BlockPlan", "UnsupportedModel", "block_layout", "check_model", "find_blocks", "probe_path"]

LAYOUTS = {
    "pair": "(hidden_states, residual), steered in the residual",
    "tensor": "one tensor, steered as it is",
    "first": "a tuple led by the block output, steered in its first item",
}
_STREAM = ("positions", "hidden_states", "residual")  # what a plain vLLM block takes


class UnsupportedModel(EmolabError, RuntimeError):
    """A model whose decoder blocks cannot be found, or not steered exactly, on vLLM."""


@dataclass(frozen=True)
class BlockPlan:
    """A model's decoder blocks (pipeline-parallel placeholders included) and each block's layout."""

    architecture: str
    blocks: list[torch.nn.Module]
    layouts: list[str | None]  # None: a placeholder for a block another pipeline rank runs

    @property
    def proven(self) -> bool:
        return self.architecture in proven_architectures()

    def describe(self) -> str:
        kinds = sorted({(type(block).__name__, layout)
                        for block, layout in zip(self.blocks, self.layouts, strict=True) if layout is not None})
        blocks = "; ".join(f"{name} returns {LAYOUTS[layout]}" for name, layout in kinds)
        proof = ("a family emolab's tests prove exact" if self.proven else
                 "not a family emolab's tests prove exact (emolab.core.families); steering follows the same rules")
        return f"{self.architecture}: {len(self.blocks)} blocks, {blocks}; {proof}"


def _returns(function: Any) -> list[ast.expr | None]:
    """The expressions ``function`` returns (its own return statements, not those of nested functions)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(function))))
    found: list[ast.expr | None] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            if isinstance(child, ast.Return):
                found.append(child.value)
            visit(child)

    visit(tree.body[0])
    return found


def _shape(value: ast.expr | None) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, ast.Tuple):
        if len(value.elts) == 2:
            second = value.elts[1]
            return "output, None" if isinstance(second, ast.Constant) and second.value is None else "two"
        return f"{len(value.elts)} items"
    return "one"


def block_layout(block: type | torch.nn.Module, architecture: str) -> str:
    """``pair``, ``tensor`` or ``first`` for a block class (or instance); ``UnsupportedModel`` otherwise."""
    cls = block if isinstance(block, type) else type(block)
    name = f"{architecture}: its decoder block {cls.__name__}"
    try:
        parameters = list(inspect.signature(cls.forward).parameters.values())[1:]
    except (TypeError, ValueError) as exc:
        raise UnsupportedModel(f"{name} has no readable forward ({exc})") from None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in parameters if p.kind in positional and p.default is inspect.Parameter.empty]
    if cls.__module__.startswith("transformers."):  # vLLM's Transformers backend runs transformers' own blocks
        if required != ["hidden_states"]:
            raise UnsupportedModel(f"{name} takes {required}, not the hidden states alone")
        returns = inspect.signature(cls.forward).return_annotation
        if returns is torch.Tensor or returns in ("torch.Tensor", "Tensor"):
            return "tensor"
        if typing.get_origin(returns) is tuple or str(returns).startswith(("tuple[", "Tuple[", "typing.Tuple[")):
            return "first"
        raise UnsupportedModel(f"{name} does not say what it returns (annotation {returns!r})")
    extra = [p for p in required if p not in _STREAM]
    if extra or "hidden_states" not in required:
        raise UnsupportedModel(
            f"{name} takes {required}: inputs beyond the residual stream (positions, hidden_states, residual), so "
            "its output is not the one residual stream the steering contract adds to")
    try:
        shapes = {_shape(value) for value in _returns(cls.forward)}
    except (OSError, TypeError, SyntaxError) as exc:
        raise UnsupportedModel(f"{name}: its forward's source cannot be read ({exc})") from None
    takes_residual = any(p.name == "residual" for p in parameters)
    if shapes == {"two"}:
        return "pair" if takes_residual else "first"
    if shapes == {"output, None"}:
        return "first"
    if shapes == {"one"} and not takes_residual:
        return "tensor"
    raise UnsupportedModel(f"{name} returns {sorted(shapes)}, which is not one of the layouts emolab knows")


def _block_lists(model: torch.nn.Module, num_layers: int) -> list[torch.nn.ModuleList]:
    """The ModuleList of decoder blocks: at a known path (``core.models.DECODER_LAYER_PATHS``, also under a
    multimodal model's ``language_model``), else the only list of ``num_layers`` blocks in the model."""
    for prefix in ("", "language_model.", "model.language_model."):
        for path in DECODER_LAYER_PATHS:
            found: Any = model
            for attr in (prefix + path).split("."):
                found = getattr(found, attr, None)
            if isinstance(found, torch.nn.ModuleList) and len(found) == num_layers:
                return [found]
    def holds_blocks(candidate: torch.nn.Module) -> bool:
        return (isinstance(candidate, torch.nn.ModuleList) and len(candidate) == num_layers and any(
            not is_missing_layer(b) and "hidden_states" in inspect.signature(b.forward).parameters for b in candidate))

    return [m for m in model.modules() if holds_blocks(m)]


def find_blocks(model: torch.nn.Module, architecture: str, num_layers: int) -> BlockPlan:
    """The decoder blocks of a vLLM model (loaded, or built on the meta device) and how to steer each."""
    lists = _block_lists(model, num_layers)
    if len(lists) != 1:
        where = "none" if not lists else f"{len(lists)} candidates"
        raise UnsupportedModel(f"{architecture}: cannot find its {num_layers} decoder blocks ({where}) in "
                               f"{type(model).__name__}")
    blocks = list(lists[0])
    layouts: list[str | None] = []
    known: dict[type, str] = {}
    for block in blocks:
        if is_missing_layer(block):
            layouts.append(None)
            continue
        if type(block) not in known:
            known[type(block)] = block_layout(block, architecture)
        layouts.append(known[type(block)])
    return BlockPlan(architecture, blocks, layouts)


def probe_path(model: str, dtype: str = "auto") -> dict[str, Any]:
    """Build ``model`` with vLLM on the meta device (no weights) and plan its blocks (run by ``check_model``).

    ``{"ok": True | False | None, "reason": ..., "architecture": ...}``: True with the plan's description;
    False when vLLM cannot build the architecture or its blocks cannot be steered exactly; None when the
    meta build itself failed (nothing is known then: the plugin checks when the weights load).
    """
    import tempfile

    from vllm.config import set_current_vllm_config
    from vllm.distributed import ensure_model_parallel_initialized, init_distributed_environment
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader.utils import get_model_architecture

    try:
        config = EngineArgs(model=model, dtype=dtype, skip_tokenizer_init=True,
                            enforce_eager=True).create_engine_config()
        model_class, _ = get_model_architecture(config.model_config)
    except Exception as exc:  # vLLM's own refusal: an unknown architecture, a config it cannot use
        return {"ok": False, "reason": f"vLLM cannot build it: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                "architecture": None}
    architecture = (getattr(config.model_config.hf_config, "architectures", None) or [model_class.__name__])[0]
    try:
        with tempfile.NamedTemporaryFile(prefix="emolab-probe-") as handle, set_current_vllm_config(config):
            init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                         distributed_init_method=f"file://{handle.name}")
            ensure_model_parallel_initialized(1, 1)
            with torch.device("meta"):
                built = model_class(vllm_config=config, prefix="")
    except Exception as exc:
        return {"ok": None, "reason": f"building {architecture} on the meta device failed ({exc!r})",
                "architecture": architecture}
    try:
        plan = find_blocks(built, architecture, int(config.model_config.hf_text_config.num_hidden_layers))
    except UnsupportedModel as exc:
        return {"ok": False, "reason": str(exc), "architecture": architecture}
    return {"ok": True, "reason": plan.describe(), "architecture": architecture}


def check_model(model: str, timeout: float = 180.0) -> tuple[bool | None, str]:
    """``probe_path`` in a subprocess (vLLM's Transformers backend patches transformers classes in the
    process that builds them; the caller may go on to serve with transformers), cached per config.

    (True, plan) / (False, why not) / (None, why it could not tell).
    """
    import hashlib
    import subprocess
    import sys
    from pathlib import Path

    from transformers import AutoConfig

    from emolab.core.cache import emolab_cache
    from emolab.fastpath.adapters import installed_version

    here = Path(__file__).resolve()
    key = hashlib.sha256("\n".join([
        AutoConfig.from_pretrained(model).to_json_string(), installed_version(), here.read_text(),
        (here.parents[2] / "core" / "families.py").read_text(),
    ]).encode()).hexdigest()[:24]
    cached = emolab_cache() / "vllm-blocks" / f"{key}.json"
    if cached.is_file():
        verdict = json.loads(cached.read_text())
        return verdict["ok"], verdict["reason"]
    try:
        proc = subprocess.run([sys.executable, "-m", "emolab.fastpath.adapters.blocks", model],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"checking its blocks took over {timeout:.0f} s"
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_PROBE)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"checking its blocks failed (exit {proc.returncode}: {tail})"
    verdict = json.loads(lines[-1][len(_PROBE):])
    if verdict["ok"] is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(verdict))
    return verdict["ok"], verdict["reason"]


_PROBE = "EMOLAB-PROBE "

if __name__ == "__main__":  # python -m emolab.fastpath.adapters.blocks MODEL [DTYPE]: one JSON line
    import sys

    print(_PROBE + json.dumps(probe_path(sys.argv[1], *sys.argv[2:3])), flush=True)
