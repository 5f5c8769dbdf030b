"""Where emolab and the Hugging Face libraries write their caches, and one clear error when they cannot.

A hub download (a model, a dataset's files) writes the hub cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``);
a hub dataset is prepared into the datasets cache (``HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``),
which ``datasets`` also takes lock files in when offline. A local model folder writes neither, and local
data files (the bundled GoEmotions copy, a folder, a file of your own) are prepared under the emolab cache
(``$EMOLAB_CACHE/datasets``), so an offline run of the embedded model needs no writable Hugging Face cache.
``check_hf_cache`` is called before a model loads or a dataset is read, only for the caches the work
will write; the folders are read from the environment as the libraries read it in a fresh process.
"""

from __future__ import annotations

import os
from pathlib import Path

from emolab.core.errors import EmolabError

__all__ = ["CacheError", "check_hf_cache", "check_writable", "datasets_cache", "emolab_cache", "hf_home", "hub_cache",
           "hub_offline", "unwritable_reason"]

_TRUE = {"1", "ON", "YES", "TRUE"}


class CacheError(EmolabError, RuntimeError):
    """A cache folder that the work ahead would write but cannot; the message names it and its variable."""


def emolab_cache() -> Path:
    """Where emolab builds models and prepares local data: ``$EMOLAB_CACHE`` or ``~/.cache/emolab``."""
    return Path(os.environ.get("EMOLAB_CACHE") or Path.home() / ".cache" / "emolab")


def hf_home() -> Path:
    """``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface`` (huggingface_hub's rule)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(os.environ.get("HF_HOME") or default).expanduser()


def hub_cache() -> Path:
    """The hub's download cache: ``$HF_HUB_CACHE`` (or the older ``$HUGGINGFACE_HUB_CACHE``), else ``$HF_HOME/hub``."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(explicit).expanduser() if explicit else hf_home() / "hub"


def datasets_cache() -> Path:
    """Where ``datasets`` prepares hub datasets: ``$HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``."""
    explicit = os.environ.get("HF_DATASETS_CACHE")
    return Path(explicit).expanduser() if explicit else hf_home() / "datasets"


def hub_offline(datasets: bool = False) -> bool:
    """Whether the hub is off: ``HF_HUB_OFFLINE`` (models: also ``TRANSFORMERS_OFFLINE``; datasets:
    ``HF_DATASETS_OFFLINE``, which wins over ``HF_HUB_OFFLINE`` when set, as in ``datasets``)."""
    def on(name: str) -> bool:
        return os.environ.get(name, "").strip().upper() in _TRUE

    if datasets:
        own = os.environ.get("HF_DATASETS_OFFLINE")
        return on("HF_HUB_OFFLINE") if own is None else own.strip().upper() in _TRUE
    return on("HF_HUB_OFFLINE") or on("TRANSFORMERS_OFFLINE")


def unwritable_reason(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (made if missing), or ``None`` when they can. Nothing is
    written: the nearest existing folder on the way must be a folder this process may write."""
    probe = Path(folder).expanduser().absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def _problem(folder: Path, what: str, variables: str) -> str | None:
    reason = unwritable_reason(folder)
    return f"the {what} {folder} cannot be written ({reason}); set {variables} to a writable folder" if reason else None


def check_writable(folder: Path, what: str, variables: str) -> None:
    """Raise ``CacheError`` naming ``folder`` and the ``variables`` to set when ``folder`` cannot be written."""
    problem = _problem(folder, what, variables)
    if problem:
        raise CacheError(problem)


def check_hf_cache(*, hub: bool = False, datasets: bool = False) -> None:
    """Check the Hugging Face caches the coming work writes: ``datasets`` (a hub dataset prepared or read),
    ``hub`` (a download). Call it before loading anything, so the error comes first and alone (one error,
    naming every cache at fault)."""
    problems = [_problem(datasets_cache(), "Hugging Face datasets cache", "HF_DATASETS_CACHE (or HF_HOME)") if datasets
                else None,
                _problem(hub_cache(), "Hugging Face hub cache", "HF_HUB_CACHE (or HF_HOME)") if hub else None]
    problems = [p for p in problems if p]
    if problems:
        raise CacheError("; ".join(problems))
