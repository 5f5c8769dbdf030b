"""Where labelled texts come from, read by ``datasets``: a hub dataset (after checking the caches it writes and,
when asked, that the hub answers at all) or local files prepared under the emolab cache. ``Record`` is one text
with its fine labels, whatever the source; ``emolab.extraction.data`` (GoEmotions) and
``emolab.extraction.labelled`` (any dataset with a label-mapping file) both build on this module.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from emolab.core.cache import check_hf_cache, check_writable, emolab_cache, hub_offline
from emolab.extraction.errors import ExtractError

__all__ = ["Record", "columns", "datasets_module", "is_hub_id", "load_hub", "load_local", "local_cache"]


@dataclass(frozen=True)
class Record:
    text: str
    labels: tuple[str, ...]  # fine GoEmotions label names



def datasets_module():
    import datasets

    datasets.disable_progress_bars()  # "Generating train split" bars would fill every extraction's log
    return datasets


def local_cache() -> Path:
    """Where ``datasets`` prepares local data files: ``$EMOLAB_CACHE/datasets`` (not the Hugging Face cache,
    nor the folder the files are in)."""
    return emolab_cache() / "datasets"


def load_local(builder: str, data_files: dict[str, str] | None = None, where: str = "", **options):
    """A ``DatasetDict`` of local files through ``datasets``' ``builder`` (``csv``, ``json``, ``parquet``, or a
    folder, whose files' names say the splits), prepared under ``local_cache()``; nothing is downloaded. A file
    it cannot read is an ``ExtractError`` naming ``where``."""
    folder = local_cache()
    check_writable(folder, "emolab cache", "EMOLAB_CACHE")
    datasets = datasets_module()
    try:
        return datasets.load_dataset(builder, data_files=data_files, cache_dir=str(folder), **options)
    except (ValueError, OSError, datasets.exceptions.DatasetGenerationError) as exc:
        cause = exc.__cause__ or exc  # datasets wraps the reader's own error
        raise ExtractError(f"{where}: cannot read it ({type(cause).__name__}: {cause})"[:400], setting="data") from None


def is_hub_id(source: str) -> bool:
    """``owner/name`` that is not a path here."""
    return bool(re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", source)) and not Path(source).exists()


def load_hub(dataset_id: str, config: str | None = None, probe: bool = False):
    """A hub dataset's ``DatasetDict``, after checking the caches it writes (the datasets cache always, the hub
    cache when online), so an unwritable cache is one error before any download; ``probe``: first make sure,
    in seconds, that the hub can be reached (``auto``, which has a copy to fall back to)."""
    online = not hub_offline(datasets=True)
    check_hf_cache(datasets=True, hub=online)
    unreachable = _hub_unreachable() if probe and online else None
    if unreachable:
        raise ExtractError(f"cannot load {dataset_id} from the hub: {unreachable}", setting="data")
    datasets = datasets_module()
    try:
        return datasets.load_dataset(dataset_id, config)
    except (OSError, ConnectionError, ValueError) as exc:  # offline, unknown id or config, ...
        raise ExtractError(f"cannot load {dataset_id} from the hub ({exc})"[:400], setting="data") from None


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (no route, no name service), in a few seconds rather than the minute of
    retries a download would spend; ``None`` when it answers or a proxy stands between (then the download
    itself tells)."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout=timeout).close()
    except OSError as exc:
        return f"{url.hostname} unreachable ({exc})"
    return None


def columns(split, names: list[str]) -> dict[str, list]:
    """Whole columns of a ``datasets.Dataset`` as Python lists (through Arrow: row by row is 50x slower)."""
    table = split.with_format("arrow").select_columns(names)[:]
    return {name: table.column(name).to_pylist() for name in names}
