"""Checks that make a bundle's metadata safe to use: names, types, ranges, limits.

A bundle folder comes from wherever the operator got it (a colleague, a download, a shared drive),
and both servers load one at start-up, so everything in it is untrusted input. These are pure
functions that either return checked values or raise ``BundleError`` with one line naming the file
(and the metadata key) at fault; ``emolab.core.bundle`` composes them with the file checks of
``emolab.core.bundle_files``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
    "check_metadata",
    "check_names_to_save",
    "describe",
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
    if meta.get("emotion_layers") is not None:
        meta["emotion_layers"] = _emotion_layers(meta["emotion_layers"], emotions, chosen, where)
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


def _by_emotion(value: Any, emotions: list[str], where: str, key: str, what: str) -> list[tuple[str, Any]]:
    """(lower-cased emotion, value) of a metadata object keyed by the bundle's emotions."""
    if not isinstance(value, dict):
        raise BundleError(f"{where}: {key!r} must be an object of emotion -> {what}, got {describe(value)}")
    seen: set[str] = set()
    for name in value:
        _check_name(name, where, f"a {key!r} key")
        if name.lower() not in emotions or name.lower() in seen:
            raise BundleError(f"{where}: {key!r} key {name!r} is not one of the bundle's emotions or repeats one")
        seen.add(name.lower())
    return [(name.lower(), item) for name, item in value.items()]


def _emotion_layers(value: Any, emotions: list[str], chosen: list[int], where: str) -> dict[str, list[int]]:
    """Emotion -> the chosen layers it steers (a non-empty subset of ``chosen_layers``; absent = all)."""
    out: dict[str, list[int]] = {}
    for name, layers in _by_emotion(value, emotions, where, "emotion_layers", "layer ids"):
        out[name] = _layer_list(layers, where, f"emotion_layers[{name!r}]", None)
        outside = [layer for layer in out[name] if layer not in chosen]
        if outside:
            raise BundleError(f"{where}: emotion_layers[{name!r}] {outside} are not among 'chosen_layers'")
    return out


def _recommendations(value: Any, emotions: list[str], where: str) -> dict[str, float | None]:
    """Emotion -> alpha (or null), keyed by the bundle's lower-cased names like everything else."""
    out: dict[str, float | None] = {}
    for name, alpha in _by_emotion(value, emotions, where, "alpha_recommendations", "alpha"):
        if alpha is not None and not (_is_real(alpha) and math.isfinite(alpha)):
            raise BundleError(f"{where}: alpha_recommendations[{name!r}] must be a finite number or null, got {describe(alpha)}")
        out[name] = alpha
    return out


def check_auc_shape(meta: dict[str, Any], where: str, n_rows: int, n_emotions: int) -> None:
    """The (possibly family-folded) ``auc_matrix`` has one row per search layer, one column per emotion."""
    matrix = meta.get("auc_matrix")
    if matrix is None:
        return
    shape = (len(matrix), len(matrix[0]))
    if shape != (n_rows, n_emotions):
        raise BundleError(f"{where}: auc_matrix has shape {shape}, want [{n_rows} search layers x {n_emotions} emotions]")
