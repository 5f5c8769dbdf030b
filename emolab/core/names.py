"""Model names: the short name clients use, and whether two names mean the same model.

A model is named by a hub id (``Qwen/Qwen3-8B``), a local folder (``/models/qwen3-8b``, or a hub-cache
snapshot ``.../models--Qwen--Qwen3-8B/snapshots/<hash>``) or an alias of an offline model
(``smollm2``). Its *short name* is the last path part, lower-cased (``Qwen/Qwen3-8B`` -> ``qwen3-8b``):
what the reference tool's client examples send as ``model``, and what a server answers to besides the
full name. Torch-free, so servers' front ends can use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["ALIAS_FOLDER_NAMES", "model_identities", "same_model", "served_model_names", "short_model_name"]

# Alias -> the short name of what it resolves to (the folder emolab.core.offline builds, named after
# the hub model it comes from), so that a bundle extracted with ``--model smollm2`` matches a server
# started on the built folder or on the hub id ``HuggingFaceTB/SmolLM2-135M-Instruct``.
ALIAS_FOLDER_NAMES = {"smollm2": "smollm2-135m-instruct", "tiny-qwen3": "tiny-qwen3", "tiny-llama": "tiny-llama"}
_HUB_CACHE_DIR = re.compile(r"^models--(?:[^/]+?--)?(?P<name>[^/]+)$")  # models--Org--Name, models--gpt2


def short_model_name(name: str) -> str:
    """``Qwen/Qwen3-8B`` -> ``qwen3-8b``; a hub-cache snapshot folder -> its repository's short name."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        return name.strip().lower()
    for i, part in enumerate(parts):  # .../models--Org--Name/snapshots/<commit>
        match = _HUB_CACHE_DIR.match(part)
        if match and parts[i + 1 : i + 2] == ["snapshots"]:
            return match.group("name").lower()
    return parts[-1].lower()


def model_identities(name: str) -> set[str]:
    """The short names under which ``name`` may appear (an alias and the folder it builds are one model)."""
    short = short_model_name(name)
    found = {short}
    for alias, folder in ALIAS_FOLDER_NAMES.items():
        if short in (alias, folder):
            found |= {alias, folder}
    return found


def same_model(a: str, b: str) -> bool:
    """Whether two model names plausibly name the same model (compared by short name, aliases resolved)."""
    return bool(model_identities(a) & model_identities(b))


def served_model_names(model: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The names a server answers to, primary first: each ``extra`` name (``--served-model-name``), then
    the ``--model`` value, then its short name; duplicates dropped."""
    names: list[str] = []
    for name in (*extra, model, short_model_name(model)):
        if name and name not in names:
            names.append(name)
    return tuple(names)
