"""llama.cpp control vectors from an emotion bundle: build the weighted sum, write it as GGUF, read it back.

A llama.cpp control-vector file is a GGUF file with ``general.architecture = controlvector``, the keys
``controlvector.model_hint`` and ``controlvector.layer_count``, and one 1-D float32 tensor
``direction.<n>`` per steered layer. llama.cpp adds ``scale * direction.<n>`` to the residual stream
at every position, which is what emolab's steering does with ``alpha * v[e, L]``; only the numbering
of layers differs in principle, and :func:`llamacpp_direction_index` holds that rule.

Files are written and read with the ``gguf`` package (the llama.cpp project's own Python writer).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emolab.core.bundle import CONVENTION_NOTE, BundleError, EmotionBundle
from emolab.core.errors import EmolabError

__all__ = ["ControlVectorFile", "ExportError", "control_vector", "emolab_layer", "export_gguf", "export_per_emotion", "llamacpp_direction_index", "model_hint_for", "parse_steering", "read_control_vector", "write_control_vector"]

ARCHITECTURE = "controlvector"
KEY_ARCHITECTURE = "general.architecture"
KEY_MODEL_HINT = f"{ARCHITECTURE}.model_hint"
KEY_LAYER_COUNT = f"{ARCHITECTURE}.layer_count"
DIRECTION_PREFIX = "direction."
# Provenance; llama.cpp ignores keys it does not know.
KEY_STEERING = "emolab.steering"
KEY_ALPHA_SCALE = "emolab.alpha_scale"
KEY_LAYER_CONVENTION = "emolab.layer_convention"
# model_hint is informational in llama.cpp (nothing reads it back); its own cvector-generator writes the
# model's general.architecture there, so emolab's offline aliases map to theirs.
ALIAS_ARCHITECTURES = {"smollm2": "llama", "tiny-llama": "llama", "tiny-qwen3": "qwen3", "Qwen/Qwen3-8B": "qwen3"}


class ExportError(EmolabError, ValueError):
    """An export that cannot be done. ``subject`` names the input at fault, so a front end can point at its
    own flag or field: ``steering``, ``scale``, ``layers``, ``output`` or ``file``."""

    def __init__(self, message: str, subject: str) -> None:
        super().__init__(message, setting=subject)
        self.subject = subject


def llamacpp_direction_index(layer: int) -> int:
    """The ``n`` of the ``direction.<n>`` tensor that steers emolab layer ``layer``: the rule is ``n = layer``.

    emolab's layer L is the output of decoder block L (0-based), i.e. transformers ``hidden_states[L+1]``.
    In llama.cpp (read at ggml-org/llama.cpp@0c1e57098, vendored by llama-cpp-python 0.3.36):

    * ``src/models/llama.cpp:223``: inside the block loop ``for (int il = 0; il < n_layer; ++il)`` the
      graph calls ``cur = build_cvec(cur, il)`` right after the FFN residual add, i.e. on the output of
      block ``il`` (0-based), the tensor named ``l_out``; every architecture's graph does the same;
    * ``src/llama-adapter.cpp:16-31`` (``tensor_for`` / ``apply_to``): block ``il`` gets ``tensors[il]``;
      ``:129`` (``apply``): ``tensors[il]`` is filled from row ``il - 1`` of the buffer handed to
      ``llama_set_adapter_cvec`` (``include/llama.h``: "buffer starting from layer 1");
    * ``common/common.cpp:1954`` (``common_control_vector_load_one``): ``direction.<n>`` goes to row
      ``n - 1`` ("layer 1 at [0]").

    So ``direction.<n>`` lands on the output of block ``n``. Block 0's output has no slot:
    ``llama-adapter.cpp:67`` ("there's never a tensor for layer 0") and ``common.cpp:1925`` rejects
    ``direction.0``. tests/export/test_gguf.py checks the rule against the real library by logits.
    """
    if layer < 1:
        raise ExportError(
            f"layer {layer} cannot be exported: llama.cpp has no control-vector slot at the output of "
            "decoder block 0 (its direction tensors start at 1)",
            subject="layers",
        )
    return layer


def emolab_layer(direction_index: int) -> int:
    """Inverse of :func:`llamacpp_direction_index`: the emolab layer a ``direction.<n>`` tensor steers."""
    if direction_index < 1:
        raise ExportError(f"direction.{direction_index} is not a valid llama.cpp control-vector layer", "file")
    return direction_index


def parse_steering(text: str) -> dict[str, float]:
    """``"fear=1.0,joy=0.5"`` -> ``{"fear": 1.0, "joy": 0.5}`` (finite alphas, each emotion once)."""
    steering: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ExportError(f"expected emotion=alpha items, got {item!r}", "steering")
        try:
            alpha = float(value)
        except ValueError:
            raise ExportError(f"alpha for {name!r} is not a number: {value.strip()!r}", "steering") from None
        if name in steering:
            raise ExportError(f"{name!r} is given twice", "steering")
        steering[name] = alpha
    if not steering:
        raise ExportError("no emotion given (expected emotion=alpha[,emotion=alpha...])", "steering")
    return steering


def _check_steering(bundle: EmotionBundle, steering: Mapping[str, float]) -> None:
    if not steering:
        raise ExportError("no emotion given", "steering")
    unknown = [e for e in steering if e not in bundle.emotions]
    if unknown:
        raise ExportError(
            f"unknown emotion {', '.join(map(repr, unknown))}; the bundle has {', '.join(bundle.emotions)}", "steering"
        )
    for emotion, alpha in steering.items():
        try:
            finite = math.isfinite(float(alpha))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise ExportError(f"alpha for {emotion!r} must be a finite number, got {alpha!r}", "steering")


def _scaled_basis(bundle: EmotionBundle, scale: str | None) -> np.ndarray:
    try:
        return bundle.steering_basis(scale)
    except BundleError as exc:  # unknown scale, or normalized without residual_norm
        raise ExportError(str(exc), "scale") from None


def control_vector(
    bundle: EmotionBundle, steering: Mapping[str, float], scale: str | None = None
) -> dict[int, np.ndarray]:
    """``{emolab layer: sum_e alpha_e * basis[L, e]}`` (float32 ``[hidden]``) on the ``raw`` or ``normalized``
    alpha scale (None: the bundle's default), keeping only layers where the sum is non-zero, so an emotion
    that steers only some layers (zero vector elsewhere) adds nothing where it does not steer."""
    _check_steering(bundle, steering)
    basis = _scaled_basis(bundle, scale).astype(np.float64)  # [n_layers, n_emotions, hidden]
    alphas = np.array([float(steering.get(e, 0.0)) for e in bundle.emotions], dtype=np.float64)
    summed = np.einsum("e,leh->lh", alphas, basis)
    directions = {
        int(layer): summed[row].astype(np.float32)
        for row, layer in enumerate(bundle.chosen_layers)
        if np.any(summed[row] != 0.0)
    }
    if not directions:
        raise ExportError("the steering adds nothing at any layer (all alphas zero?)", "steering")
    return directions


@dataclass
class ControlVectorFile:
    """A control-vector file as read back. ``directions`` is keyed the way the file names its tensors
    (llama.cpp's ``n`` of ``direction.<n>``); :meth:`by_emolab_layer` re-keys it by emolab layer."""

    model_hint: str
    layer_count: int
    directions: dict[int, np.ndarray]
    metadata: dict[str, str] = field(default_factory=dict)  # the emolab.* provenance keys, when present

    def by_emolab_layer(self) -> dict[int, np.ndarray]:
        return {emolab_layer(n): vector for n, vector in self.directions.items()}


def write_control_vector(
    path: str | Path,
    directions: Mapping[int, np.ndarray],
    model_hint: str,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``{emolab layer: vector}`` as a llama.cpp control-vector GGUF file (parent folders created).

    The file appears whole or not at all: it is written next to its target and then renamed.
    """
    if not directions:
        raise ExportError("a control vector needs at least one layer", "layers")
    tensors = {}
    for layer in sorted(directions):
        vector = np.asarray(directions[layer], dtype=np.float32)
        if vector.ndim != 1 or not np.all(np.isfinite(vector)):
            raise ExportError(f"layer {layer}: need a finite 1-D vector, got shape {vector.shape}", "layers")
        tensors[f"{DIRECTION_PREFIX}{llamacpp_direction_index(layer)}"] = vector
    if len({v.shape for v in tensors.values()}) != 1:
        raise ExportError("all layers' vectors must have the same length", "layers")
    target = Path(path)
    if target.is_dir():
        raise ExportError(f"{target} is a folder; give a file name such as fear.gguf", "output")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}", "output") from None
    try:
        _write_gguf(Path(tmp_name), tensors, model_hint, metadata or {})
        os.replace(tmp_name, target)
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}", "output") from None
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return target


def _write_gguf(path: Path, tensors: Mapping[str, np.ndarray], model_hint: str, metadata: Mapping[str, str]) -> None:
    import gguf

    writer = gguf.GGUFWriter(path, ARCHITECTURE)  # also sets general.architecture
    try:
        writer.add_string(KEY_MODEL_HINT, model_hint)
        # llama.cpp's cvector-generator writes the number of direction tensors here, as int32.
        writer.add_int32(KEY_LAYER_COUNT, len(tensors))
        for key, value in metadata.items():
            writer.add_string(key, str(value))
        for name, vector in tensors.items():
            writer.add_tensor(name, vector)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def read_control_vector(path: str | Path) -> ControlVectorFile:
    """Read a control-vector GGUF file (ours or anyone's) with the ``gguf`` package; checks the layout
    llama.cpp requires: architecture ``controlvector``, ``direction.<n>`` names with n >= 1, 1-D float32
    tensors of one length."""
    import gguf

    source = Path(path)
    if not source.is_file():
        raise ExportError(f"{source}: no such file", "file")
    try:
        reader = gguf.GGUFReader(source)
    except (ValueError, OSError) as exc:
        raise ExportError(f"{source}: not a readable GGUF file ({exc})", "file") from None
    fields = {name: reader.fields[name].contents() for name in reader.fields}
    if fields.get(KEY_ARCHITECTURE) != ARCHITECTURE:
        raise ExportError(f"{source}: general.architecture is {fields.get(KEY_ARCHITECTURE)!r}, not 'controlvector'", "file")
    directions: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        prefix, _, number = tensor.name.partition(".")
        if f"{prefix}." != DIRECTION_PREFIX or not number.isdigit() or int(number) < 1:
            raise ExportError(f"{source}: tensor {tensor.name!r} is not direction.<n> with n >= 1", "file")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32 or len(tensor.shape) != 1:
            raise ExportError(f"{source}: tensor {tensor.name} must be 1-D float32", "file")
        directions[int(number)] = np.array(tensor.data, dtype=np.float32).reshape(-1)
    if len({v.shape for v in directions.values()}) > 1:
        raise ExportError(f"{source}: direction tensors differ in length", "file")
    return ControlVectorFile(
        model_hint=str(fields.get(KEY_MODEL_HINT, "")),
        layer_count=int(fields.get(KEY_LAYER_COUNT, len(directions))),
        directions=dict(sorted(directions.items())),
        metadata={k: str(v) for k, v in fields.items() if k.startswith("emolab.")},
    )


def model_hint_for(bundle: EmotionBundle) -> str:
    """What to put in ``controlvector.model_hint``: the model's llama.cpp architecture when known
    (metadata ``model_type``, or an emolab alias), else the bundle's model name."""
    model = str(bundle.model or "")
    return str(bundle.metadata.get("model_type") or ALIAS_ARCHITECTURES.get(model) or model or "unknown")


def _provenance(bundle: EmotionBundle, steering: Mapping[str, float], scale: str | None) -> dict[str, str]:
    return {
        KEY_STEERING: json.dumps({e: float(a) for e, a in steering.items()}),
        KEY_ALPHA_SCALE: scale or bundle.alpha_scale,
        KEY_LAYER_CONVENTION: f"direction.<n> = emolab layer n; {CONVENTION_NOTE}",
    }


def export_gguf(
    bundle: EmotionBundle,
    steering: Mapping[str, float],
    output: str | Path,
    scale: str | None = None,
    model_hint: str | None = None,
) -> Path:
    """One control-vector file holding ``sum_e alpha_e * v_e`` (see :func:`control_vector`); use it in
    llama.cpp with ``--control-vector fear.gguf`` (or ``--control-vector-scaled`` to rescale it)."""
    directions = control_vector(bundle, steering, scale)
    hint = model_hint or model_hint_for(bundle)
    return write_control_vector(output, directions, hint, _provenance(bundle, steering, scale))


def export_per_emotion(
    bundle: EmotionBundle,
    folder: str | Path,
    scale: str | None = None,
    model_hint: str | None = None,
    emotions: list[str] | None = None,
) -> dict[str, Path]:
    """``<folder>/<emotion>.gguf`` at alpha 1 for each emotion, for mixing in llama.cpp with
    ``--control-vector-scaled``; returns ``{emotion: path}``."""
    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a folder", "output")
    return {
        emotion: export_gguf(bundle, {emotion: 1.0}, target / f"{emotion}.gguf", scale, model_hint)
        for emotion in (emotions or bundle.emotions)
    }
