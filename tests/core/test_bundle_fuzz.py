"""Fuzzing EmotionBundle.load with mutated bundles: it returns a sound bundle or one BundleError line.

Each example writes a small valid bundle (plus a valid-looking array outside it, a bait for
symlinks), applies a few random mutations to the metadata and the array files, and loads it. Any
other exception, a multi-line message, a file opened outside the folder, or a loaded bundle whose
contents break the loader's promises fails the test.
"""

from __future__ import annotations

import builtins
import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from emolab.core.bundle import BundleError, EmotionBundle
from emolab.core.bundle_checks import MAX_ABS_COMPONENT, MAX_NAME_LENGTH

EMOTIONS = ["anger", "joy", "sadness"]
SEARCH = [2, 3, 4, 5]
CHOSEN = [3, 4]
HIDDEN = 4
FILES = [f"{e}_{kind}.npy" for e in EMOTIONS for kind in ("chosen", "full_sweep")]
KNOWN_KEYS = [
    "emotions", "chosen_layers", "search_layers", "num_layers", "hidden", "residual_norm", "auc_matrix",
    "alpha_recommendations", "alpha_scale", "alpha_recommendations_scale", "validated_alpha_range", "model",
    "n_train", "n_val", "auc_matrix_anger_joy", "n_train_anger_joy", "n_val_sadness",
]


def write_valid_bundle(folder: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    sweep = {e: (rng.normal(size=(len(SEARCH), HIDDEN)) * 0.5).astype(np.float32) for e in EMOTIONS}
    metadata = {
        "model": "toy", "num_layers": 8, "search_layers": SEARCH, "residual_norm": [10.0, 11.0, 12.0, 13.0],
        "auc_matrix": rng.uniform(size=(len(SEARCH), len(EMOTIONS))).round(4).tolist(),
        "alpha_recommendations": {"joy": 1.5, "anger": None}, "alpha_scale": "normalized",
        "validated_alpha_range": [-0.5, 2.0], "n_train": 10, "n_val": 3,
    }
    bundle = EmotionBundle(list(EMOTIONS), list(CHOSEN), {e: sweep[e][1:3].copy() for e in EMOTIONS}, metadata, sweep)
    bundle.save(folder)
    return json.loads((folder / "metadata.json").read_text())


# ------------------------------------------------------------------------------ strategies
weird_strings = st.one_of(
    st.sampled_from([
        "", "joy", "Joy", "JOY", "../joy", "../../x/evil", "/etc/passwd", "a/b", "joy.npy", "joy\n", " joy",
        "x" * (MAX_NAME_LENGTH + 1), "raw", "normalized", "NaN", "ångst", "\x00", "C:\\evil", "a\u2028b", "auc_matrix_x\u2028y", "n_train_\x85",
    ]),
    st.text(max_size=12),
)
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, 1, 3, 4, 8, 15, -1, 10**20]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([15.7, 3.0, 1e38, 1e-300, -0.0, 0.5]),
    weird_strings,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(weird_strings, inner, max_size=4)),
    max_leaves=12,
)


def _set_in_list(meta: dict[str, Any], key: str, index: int, value: Any) -> None:
    if isinstance(meta.get(key), list) and meta[key]:
        meta[key][index % len(meta[key])] = value


metadata_mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KNOWN_KEYS) | weird_strings, json_values),
    st.tuples(st.just("delete"), st.sampled_from(KNOWN_KEYS), st.none()),
    st.tuples(st.just("item"), st.sampled_from(KNOWN_KEYS), st.tuples(st.integers(0, 20), json_values)),
    st.tuples(st.just("name"), st.integers(0, 2), weird_strings),
    st.tuples(st.just("duplicate"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("scale"), st.sampled_from(["residual_norm", "auc_matrix"]),
              st.floats() | st.sampled_from([1e38, 1e6, 0.0, -1.0, 1.0001])),
    st.tuples(st.just("rename"), st.integers(0, 2), st.sampled_from(["Title", "UPPER", "swap"])),
    st.tuples(st.just("whole"), st.none(), json_values),
    st.tuples(st.just("bytes"), st.integers(0, 600), st.binary(max_size=8)),
)

array_values = st.sampled_from(["normal", "nan", "inf", "huge", "x1e30", "tiny", "zero", "big_ratio"])
array_mutation = st.one_of(
    st.tuples(st.just("array"), st.sampled_from(FILES),
              st.tuples(st.sampled_from([(2, 4), (4, 4), (2, 5), (3, 4), (8,), (2, 4, 1), (0, 4), (2, 0)]),
                        st.sampled_from(["<f4", ">f4", "<f2", "<f8", "<i8", "|b1", "<c8", "object"]),
                        array_values)),
    st.tuples(st.just("truncate"), st.sampled_from(FILES), st.integers(0, 200)),
    st.tuples(st.just("garbage"), st.sampled_from(FILES), st.binary(max_size=200)),
    st.tuples(st.just("append"), st.sampled_from(FILES), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("npz"), st.sampled_from(FILES), st.none()),
    st.tuples(st.just("delete"), st.sampled_from(FILES), st.none()),
    st.tuples(st.just("symlink"), st.sampled_from(FILES),
              st.sampled_from(["outside", "/etc/passwd", "inside", "dangling", "loop", "folder", "/dev/zero"])),
    st.tuples(st.just("directory"), st.sampled_from([*FILES, "metadata.json"]), st.none()),
    st.tuples(st.just("fifo"), st.sampled_from([*FILES, "metadata.json"]), st.none()),
    st.tuples(st.just("symlink"), st.just("metadata.json"), st.sampled_from(["outside_meta", "inside_meta", "loop"])),
)


# ------------------------------------------------------------------------------ applying them
def apply_metadata_mutation(meta: dict[str, Any], mutation: tuple, folder: Path) -> Any:
    """The mutated metadata (any JSON value), or bytes to write verbatim."""
    kind, target, value = mutation
    if kind == "rename":  # legitimate: another tool's spelling of a name, its files renamed to match
        names = meta.get("emotions")
        if isinstance(names, list) and len(names) == 3 and all(isinstance(n, str) and n.isidentifier() for n in names):
            old = names[target]
            new = {"Title": old.title(), "UPPER": old.upper(), "swap": names[(target + 1) % 3]}[value]
            names[target] = new
            for suffix in ("_chosen.npy", "_full_sweep.npy"):
                if (folder / f"{old}{suffix}").is_file():
                    (folder / f"{old}{suffix}").replace(folder / f"{new}{suffix}")
        return meta
    if kind == "set":
        meta[target] = value
    elif kind == "delete":
        meta.pop(target, None)
    elif kind == "item":
        _set_in_list(meta, target, *value)
    elif kind in ("name", "duplicate"):
        names = meta.get("emotions")
        if not isinstance(names, list) or len(names) < 3:
            return meta
        if kind == "name":
            names[target] = value
        elif isinstance(names[target], str):
            names[(target + 1) % 3] = names[target].upper() if value else names[target]
    elif kind == "scale":
        try:
            with np.errstate(all="ignore"):
                meta[target] = (np.asarray(meta[target], dtype=np.float64) * value).tolist()
        except (KeyError, ValueError, TypeError):  # an earlier mutation removed it or made it ragged
            pass
    elif kind == "whole":
        return value
    elif kind == "bytes":  # splice bytes into the JSON text: bad UTF-8, broken syntax, NaN literals...
        text = json.dumps(meta).encode()
        return text[:target] + value + text[target + len(value):]
    return meta


def make_array(shape: tuple[int, ...], dtype: str, values: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    base = rng.normal(size=shape) * 0.5
    fill: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "normal": lambda a: a, "nan": lambda a: a * np.nan, "inf": lambda a: a + np.inf,
        "huge": lambda a: a * 1e5, "x1e30": lambda a: a * 1e30, "tiny": lambda a: a * 1e-40,
        "zero": lambda a: a * 0, "big_ratio": lambda a: a * 200,
    }
    with np.errstate(all="ignore"):
        data = fill[values](base)
        if dtype == "object":
            return np.array(data.tolist() if data.ndim else [data], dtype=object)
        return data.astype(dtype)


def apply_array_mutation(folder: Path, outside: Path, mutation: tuple) -> None:
    kind, name, value = mutation
    path = folder / name
    if path.is_dir() and not path.is_symlink():
        return
    if path.is_symlink() or path.exists():
        path.unlink()  # files, links and FIFOs alike: writing into a FIFO would block the test
    if kind == "array":
        array = make_array(*value)
        with open(path, "wb") as fh:
            np.save(fh, array, allow_pickle=array.dtype == object)
    elif kind == "truncate":
        path.write_bytes((outside / "valid.npy").read_bytes()[:value])
    elif kind == "garbage":
        path.write_bytes(value)
    elif kind == "append":
        path.write_bytes((outside / "valid.npy").read_bytes() + value)
    elif kind == "npz":
        with open(path, "wb") as fh:
            np.savez(fh, a=np.ones((2, 4), np.float32))
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        target = {
            "outside": outside / "valid.npy", "outside_meta": outside / "metadata.json",
            "inside": folder / ("joy_chosen.npy" if name != "joy_chosen.npy" else "anger_chosen.npy"),
            "inside_meta": folder / "anger_chosen.npy", "dangling": folder / "nothing.npy",
            "loop": path, "folder": folder, "/etc/passwd": Path("/etc/passwd"), "/dev/zero": Path("/dev/zero"),
        }[value]
        path.symlink_to(target)


@contextmanager
def recording_opens(paths: list[Path]):
    """Record every path opened through open(), io.open() or os.open()."""
    real_open, real_os_open = builtins.open, os.open

    def record(file: Any) -> None:
        if isinstance(file, (str, bytes, os.PathLike)):
            paths.append(Path(os.fsdecode(file)).resolve())

    def recording_open(file, *args, **kwargs):
        record(file)
        return real_open(file, *args, **kwargs)

    def recording_os_open(file, *args, **kwargs):
        record(file)
        return real_os_open(file, *args, **kwargs)

    with mock.patch.object(builtins, "open", recording_open), mock.patch.object(io, "open", recording_open), \
            mock.patch.object(os, "open", recording_os_open):
        yield


def check_loaded(bundle: EmotionBundle) -> None:
    """What a bundle that loads promises to the servers."""
    assert bundle.emotions and len(set(bundle.emotions)) == len(bundle.emotions)
    assert all(e.isidentifier() and e == e.lower() and "." not in e for e in bundle.emotions)
    assert all(isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0 for layer in bundle.chosen_layers)
    assert len(set(bundle.chosen_layers)) == len(bundle.chosen_layers)
    basis = bundle.basis()
    assert basis.dtype == np.float32 and np.isfinite(basis).all() and np.abs(basis).max() <= MAX_ABS_COMPONENT
    assert basis.shape == (len(bundle.chosen_layers), len(bundle.emotions), bundle.hidden)
    try:
        normalized = bundle.steering_basis("normalized")
    except BundleError as exc:
        assert "\n" not in str(exc)
    else:
        assert np.isfinite(normalized).all()
    norms = bundle.metadata.get("residual_norm")
    assert norms is None or all(math.isfinite(x) and x > 0 for x in norms)


@settings(max_examples=int(os.environ.get("EMOLAB_FUZZ_EXAMPLES", "400")), deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    metadata_mutations=st.lists(metadata_mutation, max_size=3),
    array_mutations=st.lists(array_mutation, max_size=3),
)
def test_load_gives_a_sound_bundle_or_one_bundle_error_line(metadata_mutations, array_mutations):
    with tempfile.TemporaryDirectory() as tmp:
        folder, outside = Path(tmp) / "bundle", Path(tmp) / "outside"
        outside.mkdir()
        meta: Any = write_valid_bundle(folder)
        np.save(outside / "valid.npy", np.load(folder / "joy_chosen.npy"))
        (outside / "metadata.json").write_text(json.dumps(meta))
        for mutation in metadata_mutations:
            if isinstance(meta, dict):
                meta = apply_metadata_mutation(meta, mutation, folder)
        if isinstance(meta, bytes):
            (folder / "metadata.json").write_bytes(meta)
        else:
            (folder / "metadata.json").write_text(json.dumps(meta))
        for mutation in array_mutations:
            apply_array_mutation(folder, outside, mutation)

        opened: list[Path] = []
        try:
            with recording_opens(opened):
                bundle = EmotionBundle.load(folder)
        except BundleError as exc:
            message = str(exc)
            assert len(message.splitlines()) == 1, message
            event(f"refused: {message.split(': ', 1)[-1][:40]}")  # --hypothesis-show-statistics shows the mix
        else:
            check_loaded(bundle)
            event("loaded")
        root = folder.resolve()
        assert [p for p in opened if not p.is_relative_to(root)] == []


def test_the_unmutated_fuzz_bundle_loads(tmp_path):
    """The fuzz test starts from a bundle that loads, so its refusals come from the mutations."""
    write_valid_bundle(tmp_path / "b")
    bundle = EmotionBundle.load(tmp_path / "b")
    check_loaded(bundle)
    assert bundle.full_sweep is not None and bundle.metadata["alpha_recommendations"] == {"joy": 1.5, "anger": None}


@pytest.mark.parametrize("shape,dtype,values", [((2, 4), "<f4", "x1e30"), ((2, 4), "<f8", "huge"), ((2, 4), "<f4", "big_ratio")])
def test_fuzz_array_values_are_refused(tmp_path, shape, dtype, values):
    """The magnitude mutations are ones the loader must refuse (guards the fuzz test's own strategies)."""
    write_valid_bundle(tmp_path / "b")
    np.save(tmp_path / "b" / "joy_chosen.npy", make_array(shape, dtype, values))
    with pytest.raises(BundleError, match="joy_chosen.npy"):
        EmotionBundle.load(tmp_path / "b")
