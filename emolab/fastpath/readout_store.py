"""How a readout computed inside vLLM's workers reaches the HTTP response: small files under the metrics folder.

The API server (``SteeringMiddleware``) gives each request that asks for a readout a random key and sends it to
the engine in ``vllm_xargs`` (``READOUT_XARG``: ``"<key>:<kind>"``, ``"<key>:<kind>:<n>"`` for n > 1 choices, each
choice's part then under ``"<key>-<i>"``: ``choice_key``). Every worker that holds some of the
bundle's chosen layers accumulates that request's projections in its buffers and, once the request has
finished, writes its part (the layers it holds, the per-layer sums and token counts, the per-token
projections when asked) to ``<metrics folder>/readout/<key>.<pid>.json``: under tensor parallelism every rank
writes the same layers, under pipeline parallelism each rank its own. The middleware waits for the parts to
cover every chosen layer, assembles them (``collect``), deletes them and answers with the summary
(``emolab.core.readout.summary_from_sums``). Files, not a socket: every API-server process can read them
(``--api-server-count``), and a worker never blocks on a reader. A worker on another host (multi-node data
parallel) writes on that host: its readouts cannot reach the head's API servers (the middleware then says so).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MAX_CHOICES", "READOUT_XARG", "assemble", "choice_index", "choice_key", "collect", "new_key", "parse_xarg",
           "readout_folder", "readout_xarg", "write_part"]

READOUT_XARG = "emolab_readout"  # vllm_xargs key: "<key>:<kind>[:<n>]", kind "means" or "per_token"
MAX_CHOICES = 128  # the contract's bound on n
_KEY = re.compile(r"[0-9a-f]{32}")
_CHILD = re.compile(r"(\d+)_")


def readout_folder(metrics_dir: str | os.PathLike[str]) -> Path:
    return Path(metrics_dir) / "readout"


def new_key() -> str:
    return secrets.token_hex(16)


def readout_xarg(key: str, kind: str, choices: int = 1) -> str:
    """The engine's readout entry of a request with ``choices`` completions (its ``n``)."""
    return f"{key}:{kind}" if choices == 1 else f"{key}:{kind}:{choices}"


def parse_xarg(value: Any) -> tuple[str, str, int] | None:
    """``(key, kind, choices)`` of a request's readout entry, None when it has none or it is malformed."""
    if not isinstance(value, str):
        return None
    key, _, rest = value.partition(":")
    kind, _, count = rest.partition(":")
    choices = 1 if not count else int(count) if count.isdigit() and len(count) <= 3 else 0
    if _KEY.fullmatch(key) and kind in ("means", "per_token") and 1 <= choices <= MAX_CHOICES:
        return key, kind, choices
    return None


def choice_key(key: str, index: int) -> str:
    """Where choice ``index`` of a request with n > 1 choices leaves its parts."""
    return f"{key}-{index}"


def choice_index(request_id: str, choices: int) -> int | None:
    """Which choice an engine request is: vLLM runs choice i of an n > 1 request as ``"{i}_{request id}"``
    (``vllm/v1/engine/parallel_sampling.py``); None for an id of another form or an index out of range."""
    found = _CHILD.match(request_id)
    index = int(found.group(1)) if found and len(found.group(1)) <= 3 else -1
    return index if 0 <= index < choices else None


def write_part(folder: Path, key: str, part: dict[str, Any]) -> None:
    """Write one worker's part atomically (a reader never sees half a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{key}.", dir=folder)
    with os.fdopen(handle, "w") as out:
        json.dump(part, out)
    os.replace(tmp, folder / f"{key}.{os.getpid()}.json")


def collect(folder: Path, key: str, n_layers: int) -> dict[str, Any] | None:
    """The assembled raw readout of ``key`` once its parts cover all ``n_layers`` chosen layers (the parts are
    then removed), ``{"unavailable": why}`` as soon as a worker said it could not read the request, else None."""
    parts = []
    for path in folder.glob(f"{key}.*.json"):
        try:
            parts.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):  # being replaced right now: next poll
            return None
    refused = next((part["unavailable"] for part in parts if part.get("unavailable")), None)
    if refused is None and len({layer for part in parts for layer in part["layers"]}) < n_layers:
        return None
    for path in folder.glob(f"{key}.*.json"):
        path.unlink(missing_ok=True)
    return {"unavailable": refused} if refused is not None else assemble(parts, n_layers)


def assemble(parts: list[dict[str, Any]], n_layers: int) -> dict[str, Any]:
    """Per-layer sums and per-token projections of every chosen layer from the workers' parts."""
    first = parts[0]
    n = len(first["prompt_sum"][0])
    prompt_sum, generated_sum = np.zeros((n_layers, n)), np.zeros((n_layers, n))
    per_token = None if first.get("per_token") is None else np.zeros((len(first["per_token"]), n_layers, n))
    for part in parts:
        for i, layer in enumerate(part["layers"]):
            prompt_sum[layer] = part["prompt_sum"][i]
            generated_sum[layer] = part["generated_sum"][i]
            if per_token is not None and part.get("per_token") is not None:
                per_token[:, layer] = np.asarray(part["per_token"])[:, i]
    return {"prompt_sum": prompt_sum, "prompt_count": int(first["prompt_count"]), "generated_sum": generated_sum,
            "generated_count": int(first["generated_count"]), "per_token": per_token,
            "note": first.get("note")}
