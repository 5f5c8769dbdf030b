"""Checks that make a bundle folder safe to load: names, paths, metadata types, array files, magnitudes.

A bundle folder comes from wherever the operator got it (a colleague, a download, a shared drive),
and both servers load one at start-up, so everything in it is untrusted input. These are pure
functions that either return checked values or raise ``BundleError`` with one line naming the file
(and the metadata key) at fault; ``emolab.core.bundle`` composes them.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from emolab.core.errors import EmolabError

__all__ = [
    "ALPHA_SCALES",
    "MAX_ABS_COMPONENT",
    "MAX_EMOTIONS",
    "MAX_HIDDEN",
    "MAX_LAYERS",
    "MAX_METADATA_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_RESIDUAL_NORM",
    "MAX_VECTOR_TO_RESIDUAL",
    "BundleError",
    "CheckedMetadata",
    "check_auc_shape",
    "check_magnitudes",
    "check_metadata",
    "check_names_to_save",
    "contained_file",
    "describe",
    "read_metadata_bytes",
    "read_npy",
]

ALPHA_SCALES = ("raw", "normalized")

# Names become file names (<name>_chosen.npy), so only plain identifiers: no separators, dots or
# absolute paths can reach the file system, and nothing that needs quoting in a message.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_SAVED_NAME = re.compile(r"[a-z][a-z0-9_]*")
MAX_NAME_LENGTH = 64
MAX_EMOTIONS = 256
# Far above any real model (the largest have ~130 blocks and hidden sizes ~16k); they keep
# layer ids and sizes inside int64 and keep a forged header from asking for absurd allocations.
MAX_LAYERS = 10_000
MAX_HIDDEN = 1 << 20
MAX_METADATA_BYTES = 16 << 20  # real metadata.json files are a few KiB
# Mean residual-stream norms of real models are in the tens to low thousands; 1e6 is past what a
# model running in float16 (components <= 65504) could produce at any hidden size we accept sanely.
MAX_RESIDUAL_NORM = 1e6
# A contrastive vector is a difference of two class means, so by the triangle inequality its length
# is at most about twice the mean residual norm; real extractions sit at 0.06-0.12 (vectors/smollm2).
# 10x is five times past that ceiling: whatever exceeds it is not a steering vector.
MAX_VECTOR_TO_RESIDUAL = 10.0
# float16 overflows past 65504 and the raw scale adds alpha * v with |alpha| up to the servers'
# default bound of 10, so a component above ~6.5e3 could overflow float16 on its own. Real
# components are below 10 (vectors/smollm2: 6.2; the reference bundle: 4.7).
MAX_ABS_COMPONENT = 6000.0

_NPY_VERSIONS = {(1, 0), (2, 0)}  # what np.save writes for plain numeric arrays
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_HEADER_LIMIT = 10_000  # numpy's own default guard against huge headers


class BundleError(EmolabError, ValueError):
    """A bundle that cannot be used; the message names the file at fault."""


@dataclass(frozen=True)
class CheckedMetadata:
    """Metadata whose types and ranges hold; ``metadata`` has the emotion names lower-cased."""

    metadata: dict[str, Any]
    emotions: list[str]  # lower-case, as the bundle exposes them
    file_stems: list[str]  # as written in metadata.json: the file names on disk use these
    chosen_layers: list[int]
    search_layers: list[int] | None


def describe(value: Any) -> str:
    """A short, single-line picture of a JSON value for error messages (never its whole content)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        kind = "list" if isinstance(value, list) else "object"
        return f"a {kind} of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, int) and abs(value) >= 10**15:
        return "a very large int"
    text = repr(value[:40] if isinstance(value, str) else value)
    return f"{type(value).__name__} {text}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------- names
def _check_name(name: Any, where: str, key: str) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise BundleError(
            f"{where}: {key} must be a plain name (a letter, then letters, digits or _; at most "
            f"{MAX_NAME_LENGTH} characters), got {describe(name)}"
        )
    return name


def _check_unique(names: Sequence[str], where: str, key: str) -> None:
    lowered = [name.lower() for name in names]
    duplicates = sorted({name for name in lowered if lowered.count(name) > 1})
    if duplicates:
        raise BundleError(f"{where}: {key!r} has duplicate names (case-insensitive): {duplicates}")


def check_names_to_save(names: Sequence[str]) -> None:
    """Only names that load back unchanged are saved: lower-case identifiers, each once."""
    for name in names:
        if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not _SAVED_NAME.fullmatch(name):
            raise BundleError(
                f"emotion name {describe(name)} cannot be saved: use a lower-case letter, then lower-case "
                f"letters, digits or _ (at most {MAX_NAME_LENGTH} characters)"
            )
    _check_unique(names, "EmotionBundle.save", "emotions")


# ------------------------------------------------------------------------------------- files
def contained_file(root: Path, name: str) -> Path:
    """``root/name`` resolved (symlinks followed), refused unless it is a regular file inside ``root``.

    ``root`` must already be resolved. Nothing is opened here: a link to ``/etc/passwd`` or to a
    device is refused from its resolved path alone. The caller opens the resolved path with
    ``O_NOFOLLOW``, which narrows (not closes) the window for a swap between check and open; a
    hard link cannot be told from a file and needs write access to the folder's file system anyway.
    """
    candidate = root / name
    try:
        resolved = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise BundleError(f"{candidate}: missing") from None
    except RuntimeError:  # what Path.resolve raises for a symlink loop before Python 3.13
        raise BundleError(f"{candidate}: a symlink loop") from None
    except OSError as exc:
        raise BundleError(f"{candidate}: cannot be resolved ({exc.strerror or type(exc).__name__})") from None
    if not resolved.is_relative_to(root):
        raise BundleError(f"{candidate}: resolves outside the bundle folder (a symlink leaving it); refused")
    try:
        regular = stat.S_ISREG(resolved.stat().st_mode)
    except OSError as exc:
        raise BundleError(f"{candidate}: unreadable ({exc.strerror or type(exc).__name__})") from None
    if not regular:
        raise BundleError(f"{candidate}: not a regular file")
    return resolved


def _open_regular(path: Path, shown: Path) -> BinaryIO:
    # O_NOFOLLOW: the path was resolved, so a symlink here means it was swapped in since the check.
    # O_NONBLOCK: a FIFO swapped in cannot hang the open; fstat then refuses it.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise BundleError(f"{shown}: unreadable ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BundleError(f"{shown}: not a regular file")
    return os.fdopen(fd, "rb")


def read_metadata_bytes(path: Path, shown: Path) -> bytes:
    """The bytes of a resolved ``metadata.json``, refused past ``MAX_METADATA_BYTES``."""
    with _open_regular(path, shown) as fh:
        data = fh.read(MAX_METADATA_BYTES + 1)
    if len(data) > MAX_METADATA_BYTES:
        raise BundleError(f"{shown}: larger than {MAX_METADATA_BYTES} bytes; not a bundle's metadata")
    return data


def read_npy(path: Path, shown: Path, rows: int, hidden: int | None) -> np.ndarray:
    """A ``[rows, hidden]`` float array from a resolved ``.npy`` file, as float32.

    The header is checked before any data is read, so a forged shape cannot make numpy allocate
    gigabytes, and an archive (``.npz``) or pickle under an ``.npy`` name is refused on sight.
    """
    with _open_regular(path, shown) as fh:
        size = os.fstat(fh.fileno()).st_size
        if fh.read(4) == _ZIP_MAGIC:
            raise BundleError(f"{shown}: a zip archive (.npz?), not a single .npy array")
        fh.seek(0)
        try:
            version = np.lib.format.read_magic(fh)
            if version not in _NPY_VERSIONS:
                raise BundleError(f"{shown}: .npy format version {version} is not supported")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read_header(fh, max_header_size=_NPY_HEADER_LIMIT)
        except BundleError:
            raise
        except (ValueError, TypeError, SyntaxError, EOFError, OSError, MemoryError, RecursionError) as exc:
            raise BundleError(f"{shown}: not a plain numeric .npy array ({_first_line(exc)})") from None
        want = f"float [{rows} x {'?' if hidden is None else hidden}]"
        if dtype.kind != "f" or dtype.hasobject or len(shape) != 2 or shape[0] != rows or not (
            1 <= shape[1] <= MAX_HIDDEN and (hidden is None or shape[1] == hidden)
        ):
            raise BundleError(f"{shown}: array of shape {tuple(shape)} ({dtype}), want {want}")
        if size - fh.tell() != shape[0] * shape[1] * dtype.itemsize:
            raise BundleError(f"{shown}: {size - fh.tell()} data bytes for a {tuple(shape)} {dtype} array (truncated?)")
        fh.seek(0)
        try:
            array = np.load(fh, allow_pickle=False, max_header_size=_NPY_HEADER_LIMIT)
        except (ValueError, OSError, EOFError, MemoryError) as exc:
            raise BundleError(f"{shown}: not a plain numeric .npy array ({_first_line(exc)})") from None
    if not np.all(np.isfinite(array)):
        raise BundleError(f"{shown}: contains NaN or infinite values")
    return array


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def check_magnitudes(shown: Path, array: np.ndarray, residual_norms: Sequence[float] | None) -> None:
    """Refuse components that could overflow float16 steering and vectors absurd for their layer.

    ``residual_norms`` holds one recorded mean residual norm per row of ``array`` (or None).
    """
    biggest = float(np.max(np.abs(array))) if array.size else 0.0
    if biggest > MAX_ABS_COMPONENT:
        raise BundleError(
            f"{shown}: a component of magnitude {biggest:.3g} exceeds {MAX_ABS_COMPONENT:g}; "
            "steering with it would overflow float16, and no extracted vector is that large"
        )
    if residual_norms is None:
        return
    lengths = np.linalg.norm(array.astype(np.float64), axis=1)
    ratios = lengths / np.asarray(residual_norms, dtype=np.float64)
    row = int(np.argmax(ratios))
    if ratios[row] > MAX_VECTOR_TO_RESIDUAL:
        raise BundleError(
            f"{shown}: row {row} has length {lengths[row]:.3g}, {ratios[row]:.3g}x the layer's recorded "
            f"residual_norm {residual_norms[row]:.4g} (at most {MAX_VECTOR_TO_RESIDUAL:g}x is plausible)"
        )


# ---------------------------------------------------------------------------------- metadata
def _layer_list(value: Any, where: str, key: str, num_layers: int | None) -> list[int]:
    if not isinstance(value, list) or not value:
        raise BundleError(f"{where}: {key!r} must be a non-empty list of integer layer ids, got {describe(value)}")
    limit = num_layers if num_layers is not None else MAX_LAYERS
    for i, layer in enumerate(value):
        if not _is_int(layer) or not 0 <= layer < limit:
            bound = f"below num_layers {num_layers}" if num_layers is not None else f"below {MAX_LAYERS}"
            raise BundleError(f"{where}: {key}[{i}] must be an integer layer id >= 0 and {bound}, got {describe(layer)}")
    if len(set(value)) != len(value):
        raise BundleError(f"{where}: {key!r} lists a layer twice: {value}")
    return list(value)


def _positive_int(meta: dict[str, Any], key: str, where: str, limit: int) -> int | None:
    value = meta.get(key)
    if value is not None and (not _is_int(value) or not 1 <= value <= limit):
        raise BundleError(f"{where}: {key!r} must be an integer from 1 to {limit}, got {describe(value)}")
    return value


def _count(meta: dict[str, Any], key: str, where: str) -> None:
    value = meta.get(key)
    if value is not None and (not _is_int(value) or not 0 <= value < 2**62):
        raise BundleError(f"{where}: {key!r} must be a non-negative integer count, got {describe(value)}")


def _auc_matrix(value: Any, where: str, key: str) -> tuple[int, int]:
    """Check a list-of-rows AUC matrix (values in [0, 1]) and return its shape."""
    if not isinstance(value, list) or not value or not all(isinstance(row, list) and row for row in value):
        raise BundleError(f"{where}: {key!r} must be a non-empty list of non-empty rows of AUCs, got {describe(value)}")
    width = len(value[0])
    for i, row in enumerate(value):
        if len(row) != width:
            raise BundleError(f"{where}: {key!r} row {i} has {len(row)} values, row 0 has {width}")
        bad = next((x for x in row if not _is_real(x) or not 0.0 <= x <= 1.0), "ok")
        if bad != "ok":
            raise BundleError(f"{where}: {key!r} row {i} must hold AUC values between 0 and 1, got {describe(bad)}")
    return len(value), width


def _scale(meta: dict[str, Any], key: str, where: str) -> None:
    value = meta.get(key)
    if value is not None and (not isinstance(value, str) or value not in ALPHA_SCALES):
        raise BundleError(f"{where}: {key!r} must be one of {list(ALPHA_SCALES)}, got {describe(value)}")


def check_metadata(raw: Any, where: str) -> CheckedMetadata:
    """Types and ranges of every key the loader or a consumer of the bundle interprets.

    Keys nobody interprets (provenance, timings, counts per class) pass through unchecked.
    """
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: must hold a JSON object, got {describe(raw)}")
    for key in ("emotions", "chosen_layers"):
        if key not in raw:
            raise BundleError(f"{where}: missing key {key!r}")
    stems = raw["emotions"]
    if not isinstance(stems, list) or not 1 <= len(stems) <= MAX_EMOTIONS:
        raise BundleError(f"{where}: 'emotions' must be a list of 1 to {MAX_EMOTIONS} names, got {describe(stems)}")
    for i, name in enumerate(stems):
        _check_name(name, where, f"emotions[{i}]")
    _check_unique(stems, where, "emotions")
    emotions = [name.lower() for name in stems]
    meta = dict(raw, emotions=emotions)

    model = meta.get("model")
    if model is not None and not isinstance(model, str):
        raise BundleError(f"{where}: 'model' must be a string, got {describe(model)}")
    num_layers = _positive_int(meta, "num_layers", where, MAX_LAYERS)
    _positive_int(meta, "hidden", where, MAX_HIDDEN)
    chosen = _layer_list(meta["chosen_layers"], where, "chosen_layers", num_layers)
    search = None
    if meta.get("search_layers") is not None:
        search = _layer_list(meta["search_layers"], where, "search_layers", num_layers)
        outside = [layer for layer in chosen if layer not in search]
        if outside:
            raise BundleError(f"{where}: 'chosen_layers' {outside} are not among 'search_layers'")
    norms = meta.get("residual_norm")
    if norms is not None:
        n_rows = len(search or chosen)
        if not isinstance(norms, list) or len(norms) != n_rows:
            raise BundleError(f"{where}: 'residual_norm' must be a list of {n_rows} numbers (one per search layer), "
                              f"got {describe(norms)}")
        bad = next((x for x in norms if not _is_real(x) or not 0 < x <= MAX_RESIDUAL_NORM), "ok")
        if bad != "ok":  # NaN fails 0 < x too
            raise BundleError(f"{where}: 'residual_norm' values must be finite, > 0 and <= {MAX_RESIDUAL_NORM:g}, "
                              f"got {describe(bad)}")
    if meta.get("auc_matrix") is not None:
        _auc_matrix(meta["auc_matrix"], where, "auc_matrix")
    for key in sorted(meta):
        if key.startswith("auc_matrix_") and meta[key] is not None:
            members = len(key[len("auc_matrix_"):].split("_"))
            if _auc_matrix(meta[key], where, key)[1] != members:
                raise BundleError(f"{where}: {key!r} must have one column per family member ({members})")
        elif key.startswith(("n_train_", "n_val_")) or key in ("n_train", "n_val"):
            _count(meta, key, where)
    _scale(meta, "alpha_scale", where)
    _scale(meta, "alpha_recommendations_scale", where)
    if meta.get("alpha_recommendations") is not None:
        meta["alpha_recommendations"] = _recommendations(meta["alpha_recommendations"], emotions, where)
    validated = meta.get("validated_alpha_range")
    if validated is not None and not (
        isinstance(validated, list) and len(validated) == 2 and all(_is_real(x) and math.isfinite(x) for x in validated)
        and validated[0] < validated[1]
    ):
        raise BundleError(f"{where}: 'validated_alpha_range' must be an increasing pair of finite numbers, "
                          f"got {describe(validated)}")
    return CheckedMetadata(meta, emotions, list(stems), chosen, search)


def _recommendations(value: Any, emotions: list[str], where: str) -> dict[str, float | None]:
    """Emotion -> alpha (or null), keyed by the bundle's lower-cased names like everything else."""
    if not isinstance(value, dict):
        raise BundleError(f"{where}: 'alpha_recommendations' must be an object of emotion -> alpha, got {describe(value)}")
    out: dict[str, float | None] = {}
    for name, alpha in value.items():
        _check_name(name, where, "an 'alpha_recommendations' key")
        if name.lower() not in emotions or name.lower() in out:
            raise BundleError(f"{where}: 'alpha_recommendations' key {name!r} is not one of the bundle's emotions or repeats one")
        if alpha is not None and not (_is_real(alpha) and math.isfinite(alpha)):
            raise BundleError(f"{where}: alpha_recommendations[{name!r}] must be a finite number or null, got {describe(alpha)}")
        out[name.lower()] = alpha
    return out


def check_auc_shape(meta: dict[str, Any], where: str, n_rows: int, n_emotions: int) -> None:
    """The (possibly family-folded) ``auc_matrix`` has one row per search layer, one column per emotion."""
    matrix = meta.get("auc_matrix")
    if matrix is None:
        return
    shape = (len(matrix), len(matrix[0]))
    if shape != (n_rows, n_emotions):
        raise BundleError(f"{where}: auc_matrix has shape {shape}, want [{n_rows} search layers x {n_emotions} emotions]")
