"""The vector bundle: one folder, one ``EmotionBundle`` object, ``save`` and ``load``.

Layout (also written by the reference tool, whose bundles load here too)::

    metadata.json
    <emotion>_chosen.npy       float32 [len(chosen_layers), hidden]
    <emotion>_full_sweep.npy   float32 [len(search_layers), hidden]   (optional)

Loading treats the folder as untrusted: it never unpickles, opens only files that resolve inside
the folder, and checks the metadata's types and every array's shape and magnitudes
(``emolab.core.bundle_checks``), so a bad bundle is one ``BundleError`` line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emolab.core.bundle_checks import ALPHA_SCALES, BundleError, check_auc_shape, check_metadata, check_names_to_save
from emolab.core.bundle_files import check_magnitudes, contained_file, read_metadata_bytes, read_npy
from emolab.core.names import same_model

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ALPHA_SCALES", "BundleError", "EmotionBundle", "ModelMismatchError", "NORMALIZED_FRACTION", "READOUT_KEY",
    "normalize_metadata",
]

CAPTURE_CONVENTION = "last_token_post_block_residual_stream"
INJECT_CONVENTION = "post_block_residual_stream"
CONVENTION_NOTE = (
    "layer L = output of decoder block L (0-based) = transformers hidden_states[L+1] "
    "(for the final block: before the final norm); vLLM: hidden_states + residual of block L"
)
# Alpha scales (see EmotionBundle.steering_basis). On the normalized scale alpha 1 adds a vector
# whose length is this fraction of the mean residual-stream norm at the layer (docs/steering-effect.md
# gives the measurements behind the choice).
NORMALIZED_FRACTION = 0.1
# Family-split keys written by the reference tool: auc_matrix_anger_joy_sadness and the like.
_FAMILY_PREFIXES = ("auc_matrix_", "n_train_", "n_val_")
# Metadata that describes a bundle without changing how it steers (left out of its fingerprint).
READOUT_KEY = "readout_reference"  # emolab.core.readout


class ModelMismatchError(BundleError):
    """A bundle extracted from another model than the one to be served (refused only when asked to be strict)."""


@dataclass
class EmotionBundle:
    emotions: list[str]
    chosen_layers: list[int]
    vectors: dict[str, np.ndarray]  # emotion -> [len(chosen_layers), hidden] float32
    metadata: dict[str, Any] = field(default_factory=dict)
    full_sweep: dict[str, np.ndarray] | None = None  # emotion -> [len(search_layers), hidden]
    derived: dict[str, np.ndarray] | None = None  # valence / arousal -> [len(chosen_layers), hidden] (core.circumplex)

    @property
    def steering_names(self) -> list[str]:
        """What a request may steer by name: the emotions, then the derived directions (ids follow that order)."""
        return [*self.emotions, *(self.derived or {})]

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

    def steering_basis(self, scale: str | None = None, derived: bool = False) -> np.ndarray:
        """The basis steering multiplies by alphas, on the ``raw`` or the ``normalized`` alpha scale.

        ``raw``: the vectors as extracted (``basis()``), so alpha 1 adds ``v[e, L]``.
        ``normalized``: each vector rescaled to ``NORMALIZED_FRACTION * residual_norm[L]``, so alpha 1
        adds a push of a tenth of the typical residual-stream norm at that layer, whatever the
        emotion, layer or model; alphas then mean the same thing across emotions and bundles.
        ``None`` takes the bundle's default (``alpha_scale``). Where an emotion does not steer a layer
        (``emotion_layers``) its vector is zero and stays zero on both scales. ``derived``: the derived
        directions' rows after the emotions' (``steering_names``), on the same scale.
        """
        scale = self.resolve_alpha_scale(scale)
        basis = self.basis()
        steers = self.steering_mask()
        if derived and self.derived:
            extra = np.stack([self.derived[name] for name in self.derived], axis=1).astype(np.float32)
            basis = np.concatenate([basis, extra], axis=1)
            steers = np.concatenate([steers, np.any(extra != 0, axis=2)], axis=1)
        if scale == "raw":
            return basis
        norms = self.residual_norms()
        basis = basis.astype(np.float64)  # tiny float32 vectors would underflow their own length
        lengths = np.linalg.norm(basis, axis=2, keepdims=True)  # [n_layers, n_emotions, 1]
        steers = steers[:, :, None]
        if np.any((lengths == 0) & steers):
            raise BundleError("a vector of zero length cannot be put on the normalized alpha scale")
        target = NORMALIZED_FRACTION * np.asarray(norms, dtype=np.float64)[:, None, None]
        scaled = np.where(steers, basis / np.where(lengths == 0, 1.0, lengths) * target, 0.0)
        return scaled.astype(np.float32)

    def layers_of(self, emotion: str) -> list[int]:
        """The chosen layers ``emotion`` steers: metadata ``emotion_layers``, else every chosen layer."""
        return _steered_layers(self.metadata, emotion, self.chosen_layers)

    def steering_mask(self) -> np.ndarray:
        """``[len(chosen_layers), n_emotions]`` bool: whether each emotion steers each chosen layer."""
        return np.array([[layer in self.layers_of(e) for e in self.emotions] for layer in self.chosen_layers],
                        dtype=bool).reshape(len(self.chosen_layers), len(self.emotions))

    @property
    def alpha_scale(self) -> str:
        """The bundle's default alpha scale: metadata ``alpha_scale``; absent, ``normalized`` when the
        bundle records ``residual_norm`` (alphas then mean the same push for every emotion and layer),
        else ``raw`` (reference-tool bundles)."""
        if self.metadata.get("alpha_scale"):
            return str(self.metadata["alpha_scale"])
        return "normalized" if self.metadata.get("residual_norm") is not None else "raw"

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

    def fingerprint(self) -> str:
        """sha256 of what steers: emotions, chosen layers, metadata (sorted JSON) and every chosen vector's bytes.

        Two bundles with one fingerprint steer identically; a simulation records it beside its trials. The readout
        reference (metadata ``readout_reference``) steers nothing and is left out.
        """
        import hashlib

        metadata = {k: v for k, v in self.metadata.items() if k != READOUT_KEY}
        digest = hashlib.sha256(json.dumps({"emotions": self.emotions, "chosen_layers": self.chosen_layers,
                                            "metadata": metadata}, sort_keys=True, default=str).encode())
        for emotion in self.emotions:
            digest.update(np.ascontiguousarray(self.vectors[emotion], dtype=np.float32).tobytes())
        for name, vectors in (self.derived or {}).items():  # the derived directions steer too, when asked for
            digest.update(name.encode() + np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        return digest.hexdigest()

    def norms(self) -> dict[str, list[float]]:
        """L2 norm per emotion at each chosen layer."""
        return {e: [float(x) for x in np.linalg.norm(self.vectors[e], axis=1)] for e in self.emotions}

    def auc_matrix(self) -> np.ndarray | None:
        """Validation ROC-AUC ``[len(search_layers), n_emotions]`` if the bundle records it."""
        matrix = self.metadata.get("auc_matrix")
        return None if matrix is None else np.asarray(matrix, dtype=np.float64)

    def auc_frame(self) -> pd.DataFrame | None:
        """The validation ROC-AUC as a DataFrame, or None when the bundle records none.

        Rows: the searched layers (index ``layer``); columns: one per emotion (``auc_matrix()``, unchanged),
        ``mean`` (the row's mean over the emotions) and ``chosen`` (True for the layers the bundle steers).
        ``emolab test`` prints and writes its AUC numbers from this frame.
        """
        import pandas as pd

        auc = self.auc_matrix()
        if auc is None:
            return None
        search = self.search_layers
        if {"mean", "chosen"} & set(self.emotions):
            raise BundleError("an emotion named 'mean' or 'chosen' would share a column of the AUC frame")
        if auc.shape != (len(search), len(self.emotions)):
            raise BundleError(f"auc_matrix has shape {list(auc.shape)}; the bundle has {len(search)} search layers "
                              f"and {len(self.emotions)} emotions")
        frame = pd.DataFrame(auc, index=pd.Index(search, name="layer"), columns=list(self.emotions))
        frame["mean"] = auc.mean(axis=1)
        frame["chosen"] = [layer in self.chosen_layers for layer in search]
        return frame

    def norms_frame(self, sweep: bool = False) -> pd.DataFrame:
        """L2 norm of every vector as a DataFrame: rows the chosen layers (index ``layer``), columns the emotions.

        The same numbers as ``norms()``. With ``sweep`` and a full sweep loaded, rows are the searched layers
        and the norms those of the full sweep's vectors.
        """
        import pandas as pd

        if sweep and self.full_sweep is not None:
            layers = self.search_layers
            norms = {e: [float(x) for x in np.linalg.norm(self.full_sweep[e], axis=1)] for e in self.emotions}
        else:
            layers, norms = self.chosen_layers, self.norms()
        return pd.DataFrame(norms, index=pd.Index(layers, name="layer"), columns=list(self.emotions))

    def check_model(self, num_layers: int, hidden: int) -> None:
        """Refuse a bundle whose shape does not fit a model of ``num_layers`` blocks of ``hidden``."""
        if hidden != self.hidden:
            raise BundleError(f"bundle hidden size {self.hidden} does not fit the model's hidden size {hidden}")
        bad = [layer for layer in self.chosen_layers if not 0 <= layer < num_layers]
        if bad:
            raise BundleError(f"bundle layers {bad} do not exist in a model of {num_layers} layers")
        if self.num_layers is not None and self.num_layers != num_layers:
            raise BundleError(f"bundle was extracted from a {self.num_layers}-layer model; this one has {num_layers}")

    def model_mismatch(self, served_model: str) -> str | None:
        """Why this bundle may not fit ``served_model`` by name, or None when the names agree.

        The shape check (``check_model``) cannot tell two models of the same size apart, so the bundle's
        ``model`` is compared with the served model by short name (``Qwen/Qwen3-8B`` = ``qwen3-8b`` =
        a folder ``.../Qwen3-8B``; an alias = the folder it builds). A bundle without ``model`` passes.
        """
        if not self.model or same_model(str(self.model), served_model):
            return None
        return (f"the bundle was extracted from {self.model!r}, but the served model is {served_model!r}: "
                "its vectors may not steer this model as intended")

    # ----------------------------------------------------------------------------------- I/O
    def save(self, path: str | Path, *, save_full_sweep: bool = True) -> Path:
        """Write the bundle; names must be lower-case identifiers, so what is saved loads back unchanged."""
        check_names_to_save(self.emotions)
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
        for stale in folder.glob("*_derived.npy"):
            stale.unlink()
        for name, vectors in (self.derived or {}).items():
            np.save(folder / f"{name}_derived.npy", vectors.astype(np.float32))
        metadata = dict(self.metadata)
        if not self.derived:
            metadata.pop("derived", None)
        metadata.update(emotions=self.emotions, chosen_layers=self.chosen_layers, hidden=self.hidden)
        (folder / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, path: str | Path, *, load_full_sweep: bool = True) -> EmotionBundle:
        """Load and check a bundle folder; anything wrong with it is one ``BundleError`` line.

        The folder is untrusted input: emotion names must be plain identifiers (they become file
        names) and are lower-cased here, the contract the steering parser relies on to match request
        names case-insensitively; every file must resolve inside the folder before it is opened;
        metadata types, array shapes and magnitudes are checked (``emolab.core.bundle_checks``).
        """
        folder = Path(path)
        try:
            is_folder = folder.is_dir()
        except ValueError:  # a NUL byte in the path
            is_folder = False
        if not is_folder:
            raise BundleError(f"{folder!s:.200}: no such bundle folder")
        root = folder.resolve()
        meta_path = folder / "metadata.json"
        text = read_metadata_bytes(contained_file(root, "metadata.json"), meta_path)
        try:
            raw = json.loads(text.decode("utf-8"))
        except RecursionError:
            raise BundleError(f"{meta_path}: not valid JSON (nested too deeply)") from None
        except ValueError as exc:  # JSONDecodeError, bad UTF-8, integers past Python's digit limit
            raise BundleError(f"{meta_path}: not valid JSON ({str(exc).splitlines()[0][:200]})") from None
        checked = check_metadata(raw, str(meta_path))
        metadata = normalize_metadata(checked.metadata)
        emotions, chosen, search = checked.emotions, checked.chosen_layers, checked.search_layers
        check_auc_shape(metadata, str(meta_path), len(search or chosen), len(emotions))
        sweep_norms: list[float] | None = metadata.get("residual_norm")
        chosen_norms = None
        if sweep_norms is not None:
            chosen_norms = [sweep_norms[(search or chosen).index(layer)] for layer in chosen]
        hidden: int | None = metadata.get("hidden")
        vectors: dict[str, np.ndarray] = {}
        for emotion, stem in zip(emotions, checked.file_stems, strict=True):
            vectors[emotion] = _load_array(root, folder, f"{stem}_chosen.npy", len(chosen), hidden, chosen_norms)
            hidden = vectors[emotion].shape[1]  # without metadata 'hidden', the first file fixes it
            steered = _steered_layers(metadata, emotion, chosen)
            idle = [layer for k, layer in enumerate(chosen) if layer not in steered and np.any(vectors[emotion][k])]
            if idle:  # the declared layers and the vectors must agree, or raw steering would add them anyway
                raise BundleError(f"{folder / (stem + '_chosen.npy')}: non-zero at layers {idle}, which "
                                  f"emotion_layers[{emotion!r}] says it does not steer")
        full_sweep = None
        sweep_names = [f"{stem}_full_sweep.npy" for stem in checked.file_stems]
        if load_full_sweep and search and all((folder / name).exists() for name in sweep_names):
            full_sweep = {
                emotion: _load_array(root, folder, name, len(search), hidden, sweep_norms)
                for emotion, name in zip(emotions, sweep_names, strict=True)
            }
        derived = None
        if metadata.get("derived"):
            names = list(metadata["derived"]) if isinstance(metadata["derived"], dict) else []
            if not names or any(not isinstance(n, str) or not n.isidentifier() or n in emotions for n in names):
                raise BundleError(f"{meta_path}: metadata derived must name directions other than the emotions")
            derived = {name: _load_array(root, folder, f"{name}_derived.npy", len(chosen), hidden, chosen_norms)
                       for name in names}
        return cls(emotions=emotions, chosen_layers=chosen, vectors=vectors, metadata=metadata, full_sweep=full_sweep,
                   derived=derived)


def _load_array(
    root: Path, folder: Path, name: str, rows: int, hidden: int | None, residual_norms: list[float] | None
) -> np.ndarray:
    """One checked array file of the bundle, as float32 (magnitudes checked before the cast)."""
    shown = folder / name
    array = read_npy(contained_file(root, name), shown, rows, hidden)
    check_magnitudes(shown, array, residual_norms)
    return array.astype(np.float32, copy=False)


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
        members = family.lower().split("_")
        matrix = meta.get(f"auc_matrix_{family}")
        if matrix is not None:
            array = np.asarray(matrix, dtype=np.float64)
            if array.ndim != 2 or array.shape[1] != len(members):
                raise BundleError(f"metadata.json: auc_matrix_{family} has shape {array.shape}, want [layers x {len(members)}]")
            for j, member in enumerate(members):
                columns[member] = array[:, j].tolist()
        n_train += int(meta.get(f"n_train_{family}") or 0)
        n_val += int(meta.get(f"n_val_{family}") or 0)
    if columns and all(e in columns for e in emotions):
        if len({len(columns[e]) for e in emotions}) != 1:
            raise BundleError("metadata.json: the auc_matrix_<family> matrices have different numbers of rows")
        meta["auc_matrix"] = np.stack([columns[e] for e in emotions], axis=1).tolist()
    meta.setdefault("n_train", n_train)
    meta.setdefault("n_val", n_val)
    meta.setdefault("families", families)
    return meta


def _steered_layers(metadata: dict, emotion: str, chosen: list[int]) -> list[int]:
    """``emotion_layers[emotion]`` where the metadata has it (absent or null: every chosen layer)."""
    per_emotion = metadata.get("emotion_layers") or {}
    return list(per_emotion.get(emotion, chosen))
