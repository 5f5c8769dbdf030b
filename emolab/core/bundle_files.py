"""Reading a bundle's files safely: only inside the folder, only plain numeric arrays, sane magnitudes.

Every file is resolved (symlinks followed) and refused unless it is a regular file inside the
resolved bundle folder, before it is opened; ``.npy`` headers are checked before any data is read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from emolab.core.bundle_checks import (
    MAX_ABS_COMPONENT,
    MAX_HIDDEN,
    MAX_METADATA_BYTES,
    MAX_VECTOR_TO_RESIDUAL,
    BundleError,
)

__all__ = ["check_magnitudes", "contained_file", "read_metadata_bytes", "read_npy"]

_NPY_VERSIONS = {(1, 0), (2, 0)}  # what np.save writes for plain numeric arrays
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_HEADER_LIMIT = 10_000  # numpy's own default guard against huge headers


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
