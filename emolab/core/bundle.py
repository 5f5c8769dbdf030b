"""The vector bundle: one folder, one ``EmotionBundle`` object, ``save`` and ``load``.

Layout (also written by the reference tool, whose bundles load here too)::

    metadata.json
    <emotion>_chosen.npy       float32 [len(chosen_layers), hidden]
    <emotion>_full_sweep.npy   float32 [len(search_layers), hidden]   (optional)

Loading never unpickles and checks every array against the metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emolab.core.errors import EmolabError

__all__ = ["ALPHA_SCALES", "BundleError", "EmotionBundle", "NORMALIZED_FRACTION", "normalize_metadata"]

CAPTURE_CONVENTION = "last_token_post_block_residual_stream"
INJECT_CONVENTION = "post_block_residual_stream"
CONVENTION_NOTE = (
    "layer L = output of decoder block L (0-based) = transformers hidden_states[L+1] "
    "(for the final block: before the final norm); vLLM: hidden_states + residual of block L"
)
# Alpha scales (see EmotionBundle.steering_basis). On the normalized scale alpha 1 adds a vector
# whose length is this fraction of the mean residual-stream norm at the layer (docs/steering-effect.md
# gives the measurements behind the choice).
ALPHA_SCALES = ("raw", "normalized")
NORMALIZED_FRACTION = 0.1
# Family-split keys written by the reference tool: auc_matrix_anger_joy_sadness and the like.
_FAMILY_PREFIXES = ("auc_matrix_", "n_train_", "n_val_")


class BundleError(EmolabError, ValueError):
    """A bundle that cannot be used; the message names the file at fault."""


@dataclass
class EmotionBundle:
    emotions: list[str]
    chosen_layers: list[int]
    vectors: dict[str, np.ndarray]  # emotion -> [len(chosen_layers), hidden] float32
    metadata: dict[str, Any] = field(default_factory=dict)
    full_sweep: dict[str, np.ndarray] | None = None  # emotion -> [len(search_layers), hidden]

    @property
    def hidden(self) -> int:
        return int(next(iter(self.vectors.values())).shape[1])

    @property
    def num_layers(self) -> int | None:
        return self.metadata.get("num_layers")

    @property
    def model(self) -> str | None:
        return self.metadata.get("model")

    @property
    def search_layers(self) -> list[int]:
        return list(self.metadata.get("search_layers") or self.chosen_layers)

    @property
    def id_map(self) -> dict[str, int]:
        return {emotion: i for i, emotion in enumerate(self.emotions)}

    def basis(self) -> np.ndarray:
        """All vectors as one float32 array ``[len(chosen_layers), n_emotions, hidden]``."""
        return np.stack([self.vectors[e] for e in self.emotions], axis=1).astype(np.float32)

    def steering_basis(self, scale: str | None = None) -> np.ndarray:
        """The basis steering multiplies by alphas, on the ``raw`` or the ``normalized`` alpha scale.

        ``raw``: the vectors as extracted (``basis()``), so alpha 1 adds ``v[e, L]``.
        ``normalized``: each vector rescaled to ``NORMALIZED_FRACTION * residual_norm[L]``, so alpha 1
        adds a push of a tenth of the typical residual-stream norm at that layer, whatever the
        emotion, layer or model; alphas then mean the same thing across emotions and bundles.
        ``None`` takes the bundle's default, metadata ``alpha_scale`` (absent: ``raw``).
        """
        scale = self.resolve_alpha_scale(scale)
        basis = self.basis()
        if scale == "raw":
            return basis
        norms = self.residual_norms()
        lengths = np.linalg.norm(basis, axis=2, keepdims=True)  # [n_layers, n_emotions, 1]
        if np.any(lengths == 0):
            raise BundleError("a vector of zero length cannot be put on the normalized alpha scale")
        target = NORMALIZED_FRACTION * np.asarray(norms, dtype=np.float64)[:, None, None]
        return (basis / lengths * target).astype(np.float32)

    @property
    def alpha_scale(self) -> str:
        """The bundle's default alpha scale (metadata ``alpha_scale``; absent means ``raw``)."""
        return str(self.metadata.get("alpha_scale") or "raw")

    def resolve_alpha_scale(self, requested: str | None = None) -> str:
        """The alpha scale to use: the one asked for, else the bundle's default. The one place that decides."""
        scale = requested or self.alpha_scale
        if scale not in ALPHA_SCALES:
            raise BundleError(f"unknown alpha scale {scale!r}; choose from {list(ALPHA_SCALES)}")
        return scale

    def residual_norms(self) -> list[float]:
        """Mean residual-stream L2 norm at each chosen layer, from metadata ``residual_norm``."""
        values = self.metadata.get("residual_norm")
        if values is None:
            raise BundleError(
                "the normalized alpha scale needs metadata 'residual_norm' (recorded by emolab extract); "
                "this bundle lacks it (reference-tool bundles do): use the raw scale or re-extract"
            )
        search = self.search_layers
        if len(values) != len(search):
            raise BundleError(f"metadata residual_norm has {len(values)} values for {len(search)} search layers")
        missing = [layer for layer in self.chosen_layers if layer not in search]
        if missing:
            raise BundleError(f"chosen layers {missing} are not among search_layers, so have no residual_norm")
        return [float(values[search.index(layer)]) for layer in self.chosen_layers]

    def vector(self, emotion: str, layer: int) -> np.ndarray:
        return self.vectors[emotion][self.chosen_layers.index(layer)]

    def norms(self) -> dict[str, list[float]]:
        """L2 norm per emotion at each chosen layer."""
        return {e: [float(x) for x in np.linalg.norm(self.vectors[e], axis=1)] for e in self.emotions}

    def auc_matrix(self) -> np.ndarray | None:
        """Validation ROC-AUC ``[len(search_layers), n_emotions]`` if the bundle records it."""
        matrix = self.metadata.get("auc_matrix")
        return None if matrix is None else np.asarray(matrix, dtype=np.float64)

    def check_model(self, num_layers: int, hidden: int) -> None:
        """Refuse a bundle whose shape does not fit a model of ``num_layers`` blocks of ``hidden``."""
        if hidden != self.hidden:
            raise BundleError(f"bundle hidden size {self.hidden} does not fit the model's hidden size {hidden}")
        bad = [layer for layer in self.chosen_layers if not 0 <= layer < num_layers]
        if bad:
            raise BundleError(f"bundle layers {bad} do not exist in a model of {num_layers} layers")
        if self.num_layers is not None and self.num_layers != num_layers:
            raise BundleError(f"bundle was extracted from a {self.num_layers}-layer model; this one has {num_layers}")

    # ----------------------------------------------------------------------------------- I/O
    def save(self, path: str | Path, *, save_full_sweep: bool = True) -> Path:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        from emolab.core.emotions import EKMAN_GROUPS

        for stale in sorted(set(EKMAN_GROUPS) - set(self.emotions)):  # an earlier bundle in this folder
            for suffix in ("_chosen.npy", "_full_sweep.npy"):
                (folder / f"{stale}{suffix}").unlink(missing_ok=True)
        for emotion in self.emotions:
            np.save(folder / f"{emotion}_chosen.npy", self.vectors[emotion].astype(np.float32))
            sweep_path = folder / f"{emotion}_full_sweep.npy"
            if save_full_sweep and self.full_sweep is not None:
                np.save(sweep_path, self.full_sweep[emotion].astype(np.float32))
            elif sweep_path.exists():
                sweep_path.unlink()  # never leave a stale sweep beside new vectors
        metadata = dict(self.metadata)
        metadata.update(emotions=self.emotions, chosen_layers=self.chosen_layers, hidden=self.hidden)
        (folder / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, path: str | Path, *, load_full_sweep: bool = True) -> EmotionBundle:
        folder = Path(path)
        meta_path = folder / "metadata.json"
        if not folder.is_dir():
            raise BundleError(f"{folder}: no such bundle folder")
        if not meta_path.is_file():
            raise BundleError(f"{meta_path}: missing (a bundle folder needs metadata.json)")
        try:
            metadata = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{meta_path}: not valid JSON ({exc})") from None
        for key in ("emotions", "chosen_layers"):
            if key not in metadata:
                raise BundleError(f"{meta_path}: missing key {key!r}")
        emotions = [str(e) for e in metadata["emotions"]]
        chosen = [int(x) for x in metadata["chosen_layers"]]
        metadata = normalize_metadata(metadata)
        hidden = metadata.get("hidden")
        vectors = {e: _load_array(folder / f"{e}_chosen.npy", (len(chosen), hidden)) for e in emotions}
        hidden = hidden or next(iter(vectors.values())).shape[1]
        for e in emotions:  # the first file fixes hidden when metadata lacks it
            _check_shape(folder / f"{e}_chosen.npy", vectors[e], (len(chosen), hidden))
        full_sweep = None
        n_search = len(metadata.get("search_layers") or [])
        if load_full_sweep and n_search and all((folder / f"{e}_full_sweep.npy").exists() for e in emotions):
            full_sweep = {e: _load_array(folder / f"{e}_full_sweep.npy", (n_search, hidden)) for e in emotions}
        auc = metadata.get("auc_matrix")
        if auc is not None and np.asarray(auc).shape != (n_search or len(chosen), len(emotions)):
            raise BundleError(
                f"{meta_path}: auc_matrix has shape {np.asarray(auc).shape}, "
                f"want [{n_search} search layers x {len(emotions)} emotions]"
            )
        return cls(emotions=emotions, chosen_layers=chosen, vectors=vectors, metadata=metadata, full_sweep=full_sweep)


def _load_array(path: Path, shape: tuple[int | None, int | None]) -> np.ndarray:
    if not path.is_file():
        raise BundleError(f"{path}: missing")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:  # pickled object arrays and corrupt headers both land here
        raise BundleError(f"{path}: not a plain numeric .npy array ({exc})") from None
    except OSError as exc:
        raise BundleError(f"{path}: unreadable ({exc})") from None
    _check_shape(path, array, shape)
    if not np.all(np.isfinite(array)):
        raise BundleError(f"{path}: contains NaN or infinite values")
    return array.astype(np.float32, copy=False)


def _check_shape(path: Path, array: np.ndarray, shape: tuple[int | None, int | None]) -> None:
    if array.ndim != 2 or array.dtype.kind != "f" or any(
        want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
    ):
        want = " x ".join("?" if s is None else str(s) for s in shape)
        raise BundleError(f"{path}: array of shape {array.shape} ({array.dtype}), want float [{want}]")


def normalize_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Fold the reference tool's family-split keys into ``auc_matrix``, ``n_train`` and ``n_val``.

    The reference tool extracted ``anger/joy/sadness`` and ``disgust/fear/surprise`` as two families,
    each contrasted within itself; its metadata keeps one AUC matrix and count per family. The
    combined matrix puts each emotion's column where ``emotions`` lists it.
    """
    meta = dict(metadata)
    emotions = list(meta["emotions"])
    families = sorted({k[len(p):] for k in meta for p in _FAMILY_PREFIXES if k.startswith(p)})
    if not families or "auc_matrix" in meta:
        return meta
    columns: dict[str, list[float]] = {}
    n_train = n_val = 0
    for family in families:
        members = family.split("_")
        matrix = meta.get(f"auc_matrix_{family}")
        if matrix is not None:
            array = np.asarray(matrix, dtype=np.float64)
            if array.ndim != 2 or array.shape[1] != len(members):
                raise BundleError(f"metadata.json: auc_matrix_{family} has shape {array.shape}, want [layers x {len(members)}]")
            for j, member in enumerate(members):
                columns[member] = array[:, j].tolist()
        n_train += int(meta.get(f"n_train_{family}", 0))
        n_val += int(meta.get(f"n_val_{family}", 0))
    if columns and all(e in columns for e in emotions):
        meta["auc_matrix"] = np.stack([columns[e] for e in emotions], axis=1).tolist()
    meta.setdefault("n_train", n_train)
    meta.setdefault("n_val", n_val)
    meta.setdefault("families", families)
    return meta
