"""Bundle save/load, the reference tool's format, and every way a bundle can be broken."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from emolab.core.bundle import BundleError, EmotionBundle, normalize_metadata

EMOTIONS = ["anger", "joy", "sadness"]


def make_bundle(hidden: int = 4) -> EmotionBundle:
    rng = np.random.default_rng(0)
    search = [2, 3, 4, 5]
    sweep = {e: rng.normal(size=(len(search), hidden)).astype(np.float32) for e in EMOTIONS}
    return EmotionBundle(
        emotions=list(EMOTIONS),
        chosen_layers=[3, 4],
        vectors={e: sweep[e][1:3].copy() for e in EMOTIONS},
        metadata={"model": "toy", "num_layers": 8, "search_layers": search, "auc_matrix": rng.uniform(size=(4, 3)).tolist()},
        full_sweep=sweep,
    )


@pytest.fixture()
def saved(tmp_path) -> Path:
    return make_bundle().save(tmp_path / "b")


def test_round_trip_is_bit_exact(saved):
    original = make_bundle()
    loaded = EmotionBundle.load(saved)
    assert loaded.emotions == EMOTIONS and loaded.chosen_layers == [3, 4]
    assert loaded.hidden == 4 and loaded.num_layers == 8 and loaded.model == "toy"
    assert loaded.search_layers == [2, 3, 4, 5]
    for e in EMOTIONS:
        np.testing.assert_array_equal(loaded.vectors[e], original.vectors[e])
        np.testing.assert_array_equal(loaded.full_sweep[e], original.full_sweep[e])
    np.testing.assert_array_equal(loaded.auc_matrix(), np.asarray(original.metadata["auc_matrix"]))
    assert json.loads((saved / "metadata.json").read_text())["hidden"] == 4


def test_basis_vector_norms_and_ids():
    bundle = make_bundle()
    basis = bundle.basis()
    assert basis.shape == (2, 3, 4) and basis.dtype == np.float32
    np.testing.assert_array_equal(basis[1, 2], bundle.vectors["sadness"][1])
    np.testing.assert_array_equal(bundle.vector("joy", 3), bundle.vectors["joy"][0])
    assert bundle.id_map == {"anger": 0, "joy": 1, "sadness": 2}
    assert bundle.norms()["anger"] == pytest.approx(np.linalg.norm(bundle.vectors["anger"], axis=1).tolist())


def test_check_model():
    bundle = make_bundle()
    bundle.check_model(8, 4)
    with pytest.raises(BundleError, match="hidden size 4"):
        bundle.check_model(8, 5)
    with pytest.raises(BundleError, match="8-layer"):
        bundle.check_model(9, 4)
    with pytest.raises(BundleError, match=r"\[3, 4\] do not exist"):
        bundle.check_model(3, 4)


def test_save_without_sweep_removes_a_stale_one(saved):
    assert (saved / "joy_full_sweep.npy").exists()
    make_bundle().save(saved, save_full_sweep=False)
    assert not list(saved.glob("*_full_sweep.npy"))
    assert EmotionBundle.load(saved).full_sweep is None


def test_reference_bundle_folds_family_split_keys(reference_bundle_path):
    bundle = EmotionBundle.load(reference_bundle_path)
    raw = json.loads((reference_bundle_path / "metadata.json").read_text())
    assert bundle.emotions == ["anger", "joy", "sadness", "disgust", "fear", "surprise"]
    assert bundle.chosen_layers == [20, 21, 22] and bundle.hidden == 4096 and bundle.num_layers == 36
    assert bundle.basis().shape == (3, 6, 4096)
    assert bundle.full_sweep is None
    auc = bundle.auc_matrix()
    assert auc.shape == (12, 6)
    first, second = np.asarray(raw["auc_matrix_anger_joy_sadness"]), np.asarray(raw["auc_matrix_disgust_fear_surprise"])
    np.testing.assert_array_equal(auc[:, :3], first)
    np.testing.assert_array_equal(auc[:, 3:], second)
    assert bundle.metadata["n_train"] == 7274 + 1591
    assert bundle.metadata["n_val"] == 1819 + 398
    assert bundle.metadata["families"] == ["anger_joy_sadness", "disgust_fear_surprise"]
    bundle.check_model(36, 4096)


def test_family_columns_follow_the_emotion_order():
    meta = {
        "emotions": ["joy", "fear", "anger"],
        "auc_matrix_anger_joy": [[0.1, 0.2]],
        "auc_matrix_fear": [[0.3]],
        "n_train_anger_joy": 5, "n_train_fear": 2,
    }
    folded = normalize_metadata(meta)
    assert folded["auc_matrix"] == [[0.2, 0.3, 0.1]]
    assert folded["n_train"] == 7 and folded["n_val"] == 0
    assert normalize_metadata({"emotions": ["a"], "auc_matrix": [[1.0]], "n_train_a": 3}).get("n_train") is None


# ------------------------------------------------------------------------------ broken bundles
def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "broken"
    shutil.copytree(src, dst)
    return dst


def test_pickled_object_array_is_refused_without_unpickling(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    np.save(folder / "joy_chosen.npy", np.array([[{"boom": 1}] * 4] * 2, dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match="joy_chosen.npy"):
        EmotionBundle.load(folder)


@pytest.mark.parametrize(
    ("file", "array"),
    [
        ("anger_chosen.npy", np.zeros((3, 4), np.float32)),  # 3 rows but 2 chosen layers
        ("anger_chosen.npy", np.zeros((2, 5), np.float32)),  # hidden 5, metadata says 4
        ("anger_chosen.npy", np.zeros((8,), np.float32)),  # flat
        ("anger_chosen.npy", np.zeros((2, 4), np.int64)),  # not float
        ("sadness_full_sweep.npy", np.zeros((3, 4), np.float32)),  # 4 searched layers
    ],
)
def test_wrong_shape_names_the_file(saved, tmp_path, file, array):
    folder = _copy(saved, tmp_path)
    np.save(folder / file, array)
    with pytest.raises(BundleError, match=file):
        EmotionBundle.load(folder)


def test_hidden_mismatch_between_files_without_metadata_hidden(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    meta = json.loads((folder / "metadata.json").read_text())
    del meta["hidden"]
    (folder / "metadata.json").write_text(json.dumps(meta))
    np.save(folder / "sadness_chosen.npy", np.zeros((2, 6), np.float32))
    with pytest.raises(BundleError, match="sadness_chosen.npy"):
        EmotionBundle.load(folder)


def test_missing_vector_file_names_it(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / "joy_chosen.npy").unlink()
    with pytest.raises(BundleError, match="joy_chosen.npy: missing"):
        EmotionBundle.load(folder)


def test_nan_is_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    array = np.zeros((2, 4), np.float32)
    array[1, 2] = np.nan
    np.save(folder / "anger_chosen.npy", array)
    with pytest.raises(BundleError, match="anger_chosen.npy: contains NaN"):
        EmotionBundle.load(folder)


def test_truncated_npy_is_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / "joy_chosen.npy").write_bytes((folder / "joy_chosen.npy").read_bytes()[:40])
    with pytest.raises(BundleError, match="joy_chosen.npy"):
        EmotionBundle.load(folder)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"emotions": ["anger", "joy", "sadness"]}', "missing key 'chosen_layers'"),
        (None, "metadata.json: missing"),
    ],
)
def test_bad_metadata_names_the_file(saved, tmp_path, content, message):
    folder = _copy(saved, tmp_path)
    if content is None:
        (folder / "metadata.json").unlink()
    else:
        (folder / "metadata.json").write_text(content)
    with pytest.raises(BundleError, match=message) as info:
        EmotionBundle.load(folder)
    assert "metadata.json" in str(info.value)


def test_auc_matrix_shape_is_checked(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    meta = json.loads((folder / "metadata.json").read_text())
    meta["auc_matrix"] = [[0.5, 0.5, 0.5]] * 3  # 3 rows for 4 searched layers
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="metadata.json: auc_matrix"):
        EmotionBundle.load(folder)


def test_no_such_folder(tmp_path):
    with pytest.raises(BundleError, match="no such bundle folder"):
        EmotionBundle.load("bad\0path")
    with pytest.raises(BundleError, match="no such bundle folder"):
        EmotionBundle.load(tmp_path / "nope")


def test_saving_into_an_old_bundle_folder_removes_its_other_emotions(tmp_path):
    import numpy as np

    from emolab.core.bundle import EmotionBundle

    rng = np.random.default_rng(0)
    six = ["anger", "joy", "sadness", "disgust", "fear", "surprise"]
    EmotionBundle(six, [1], {e: rng.standard_normal((1, 4)).astype(np.float32) for e in six}).save(tmp_path)
    two = EmotionBundle(["anger", "joy"], [1], {e: rng.standard_normal((1, 4)).astype(np.float32) for e in ["anger", "joy"]})
    two.save(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["anger_chosen.npy", "joy_chosen.npy"]
    assert EmotionBundle.load(tmp_path).emotions == ["anger", "joy"]


# ------------------------------------------------------------- hostile bundles (outside probe)
def _write_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "metadata.json").read_text())
    meta.update(changes)
    (folder / "metadata.json").write_text(json.dumps(meta))


def _one_line_error(folder: Path, *needles: str) -> str:
    """Load must fail with exactly one BundleError line that mentions every needle."""
    with pytest.raises(BundleError) as info:
        EmotionBundle.load(folder)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    for needle in needles:
        assert needle in message, message
    return message


def _refused_opening(monkeypatch, folder: Path, *needles: str) -> list[Path]:
    """Load ``folder`` expecting a one-line refusal; return every path opened meanwhile, resolved.

    Records open(), io.open() (pathlib) and os.open(), the ways a file can be opened for reading.
    """
    import builtins
    import io
    import os

    paths: list[Path] = []
    real_open, real_os_open = builtins.open, os.open

    def recording_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)):
            paths.append(Path(file).resolve())
        return real_open(file, *args, **kwargs)

    def recording_os_open(file, *args, **kwargs):
        paths.append(Path(file).resolve())
        return real_os_open(file, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", recording_open)
        patch.setattr(io, "open", recording_open)
        patch.setattr(os, "open", recording_os_open)
        _one_line_error(folder, *needles)
    return paths


def _outside(paths: list[Path], folder: Path) -> list[Path]:
    root = folder.resolve()
    return [p for p in paths if not p.is_relative_to(root)]


@pytest.mark.parametrize("name", ["../../x/evil", "../evil", "sub/evil", "ev.il", "", " anger", "anger\n", "-x", "1st"])
def test_emotion_names_that_are_not_plain_identifiers_are_refused(saved, tmp_path, monkeypatch, name):
    folder = _copy(saved, tmp_path)
    (tmp_path / "x").mkdir()
    np.save(tmp_path / "x" / "evil_chosen.npy", np.ones((2, 4), np.float32))  # the traversal target exists
    np.save(tmp_path / "evil_chosen.npy", np.ones((2, 4), np.float32))
    _write_meta(folder, emotions=["anger", name], auc_matrix=None)
    assert _outside(_refused_opening(monkeypatch, folder, "metadata.json", "emotions"), folder) == []


def test_absolute_emotion_name_is_refused_before_anything_is_opened(saved, tmp_path, monkeypatch):
    folder = _copy(saved, tmp_path)
    target = tmp_path / "elsewhere"
    target.mkdir()
    np.save(target / "evil_chosen.npy", np.ones((2, 4), np.float32))
    _write_meta(folder, emotions=[str(target / "evil")], auc_matrix=None)
    assert _outside(_refused_opening(monkeypatch, folder, "metadata.json", "emotions"), folder) == []


def test_symlinked_array_leaving_the_folder_is_refused_unopened(saved, tmp_path, monkeypatch):
    folder = _copy(saved, tmp_path)
    (folder / "joy_chosen.npy").unlink()
    (folder / "joy_chosen.npy").symlink_to("/etc/passwd")
    opened = _refused_opening(monkeypatch, folder, "joy_chosen.npy", "outside")
    assert Path("/etc/passwd").resolve() not in opened and _outside(opened, folder) == []


def test_symlinked_array_to_a_valid_npy_outside_is_refused(saved, tmp_path, monkeypatch):
    folder = _copy(saved, tmp_path)
    np.save(tmp_path / "stolen.npy", np.ones((2, 4), np.float32))
    (folder / "joy_chosen.npy").unlink()
    (folder / "joy_chosen.npy").symlink_to(tmp_path / "stolen.npy")
    assert _outside(_refused_opening(monkeypatch, folder, "joy_chosen.npy", "outside"), folder) == []


def test_symlinked_metadata_leaving_the_folder_is_refused_unopened(saved, tmp_path, monkeypatch):
    folder = _copy(saved, tmp_path)
    (tmp_path / "meta.json").write_text((folder / "metadata.json").read_text())
    (folder / "metadata.json").unlink()
    (folder / "metadata.json").symlink_to(tmp_path / "meta.json")
    assert _outside(_refused_opening(monkeypatch, folder, "metadata.json", "outside"), folder) == []


def test_symlink_staying_inside_the_folder_is_allowed(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / "store").mkdir()
    (folder / "joy_chosen.npy").rename(folder / "store" / "joy.npy")
    (folder / "joy_chosen.npy").symlink_to(Path("store") / "joy.npy")
    np.testing.assert_array_equal(EmotionBundle.load(folder).vectors["joy"], make_bundle().vectors["joy"])


def test_bundle_folder_reached_through_a_symlink_loads(saved, tmp_path):
    (tmp_path / "link").symlink_to(saved)
    assert EmotionBundle.load(tmp_path / "link").emotions == EMOTIONS


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ('"a string"', ["JSON object", "str"]),
        ("42", ["JSON object", "int"]),
        ("null", ["JSON object", "null"]),
        ('["anger"]', ["JSON object", "list"]),
        ('{"emotions": null, "chosen_layers": [3, 4]}', ["'emotions'", "null"]),
        ('{"emotions": ["anger", "joy", "sadness"], "chosen_layers": null}', ["'chosen_layers'", "null"]),
    ],
)
def test_malformed_metadata_shapes_give_one_clear_line(saved, tmp_path, content, needles):
    folder = _copy(saved, tmp_path)
    (folder / "metadata.json").write_text(content)
    _one_line_error(folder, "metadata.json", *needles)


def test_npz_named_npy_gives_one_clear_line(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    np.savez(folder / "joy.npz", a=np.ones((2, 4), np.float32))
    (folder / "joy.npz").replace(folder / "joy_chosen.npy")
    _one_line_error(folder, "joy_chosen.npy")


def _smollm2_copy(smollm2_bundle_path: Path, tmp_path: Path) -> Path:
    return _copy(smollm2_bundle_path, tmp_path)


@pytest.mark.parametrize("value", [float("nan"), 1e38, 0.0, -5.0, float("inf"), 1e7])
def test_absurd_residual_norm_is_refused(smollm2_bundle_path, tmp_path, value):
    folder = _smollm2_copy(smollm2_bundle_path, tmp_path)
    norms = json.loads((folder / "metadata.json").read_text())["residual_norm"]
    norms[2] = value
    _write_meta(folder, residual_norm=norms)
    _one_line_error(folder, "metadata.json", "residual_norm")


def test_residual_norm_of_the_wrong_length_is_refused(smollm2_bundle_path, tmp_path):
    folder = _smollm2_copy(smollm2_bundle_path, tmp_path)
    _write_meta(folder, residual_norm=[100.0, 200.0])
    _one_line_error(folder, "metadata.json", "residual_norm")


def test_huge_vectors_are_refused(smollm2_bundle_path, tmp_path):
    folder = _smollm2_copy(smollm2_bundle_path, tmp_path)
    np.save(folder / "fear_chosen.npy", np.load(folder / "fear_chosen.npy") * np.float32(1e30))
    _one_line_error(folder, "fear_chosen.npy")


def test_huge_vectors_are_refused_without_residual_norm(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    np.save(folder / "joy_chosen.npy", np.full((2, 4), 1e30, np.float32))
    _one_line_error(folder, "joy_chosen.npy")


@pytest.mark.parametrize("layers", [[3, 4.7], [3.0, 4.0], [True, 4], [3, -4], [3, 3], ["3", 4], []])
def test_chosen_layers_must_be_distinct_non_negative_ints(saved, tmp_path, layers):
    folder = _copy(saved, tmp_path)
    _write_meta(folder, chosen_layers=layers)
    _one_line_error(folder, "metadata.json", "chosen_layers")


@pytest.mark.parametrize("names", [["anger", "joy", "joy"], ["anger", "joy", "Joy"]])
def test_duplicate_emotion_names_are_refused(saved, tmp_path, names):
    folder = _copy(saved, tmp_path)
    (folder / "Joy_chosen.npy").write_bytes((folder / "joy_chosen.npy").read_bytes())
    _write_meta(folder, emotions=names)
    _one_line_error(folder, "metadata.json", "emotions", "duplicate")


def test_mixed_case_emotion_names_load_lower_cased_and_are_addressable(saved, tmp_path):
    from emolab.core.steering import parse_steering

    folder = _copy(saved, tmp_path)
    (folder / "joy_chosen.npy").rename(folder / "Joy_chosen.npy")
    _write_meta(folder, emotions=["anger", "Joy", "sadness"], alpha_recommendations={"Joy": 1.5})
    bundle = EmotionBundle.load(folder)
    assert bundle.emotions == ["anger", "joy", "sadness"]
    assert bundle.metadata["emotions"] == ["anger", "joy", "sadness"]
    assert bundle.metadata["alpha_recommendations"] == {"joy": 1.5}
    np.testing.assert_array_equal(bundle.vectors["joy"], make_bundle().vectors["joy"])
    assert parse_steering(["JOY", 1.0, "joy", 0.5], bundle.emotions) == [(1, 1.0), (1, 0.5)]


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "Joy.x", "joy", "JOY"])
def test_save_refuses_names_that_would_not_load(tmp_path, name):
    rng = np.random.default_rng(1)
    names = ["joy", name]
    bundle = EmotionBundle(names, [1], {e: rng.standard_normal((1, 4)).astype(np.float32) for e in names})
    with pytest.raises(BundleError, match="emotion"):
        bundle.save(tmp_path / "b")
    assert not (tmp_path / "evil_chosen.npy").exists()


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"num_layers": 0}, "num_layers"),
        ({"num_layers": "8"}, "num_layers"),
        ({"num_layers": 4}, "chosen_layers"),  # chosen layer 4 does not exist in a 4-layer model
        ({"hidden": 4.0}, "hidden"),
        ({"hidden": -4}, "hidden"),
        ({"search_layers": [2, 3, "4", 5]}, "search_layers"),
        ({"search_layers": {"a": 1}}, "search_layers"),
        ({"search_layers": [2, 3, 5, 6]}, "search_layers"),  # chosen layer 4 was not searched
        ({"auc_matrix": [[0.5, 0.5, "x"]] * 4}, "auc_matrix"),
        ({"auc_matrix": [[0.5, 0.5, float("nan")]] * 4}, "auc_matrix"),
        ({"auc_matrix": [[0.5, 0.5, 1.5]] * 4}, "auc_matrix"),
        ({"auc_matrix": [[0.5, 0.5]] * 4}, "auc_matrix"),
        ({"auc_matrix": [[0.5, 0.5, 0.5], [0.5]] * 2}, "auc_matrix"),
        ({"auc_matrix": "0.5"}, "auc_matrix"),
        ({"alpha_recommendations": [1.5]}, "alpha_recommendations"),
        ({"alpha_recommendations": {"joy": "1.5"}}, "alpha_recommendations"),
        ({"alpha_recommendations": {"joy": float("inf")}}, "alpha_recommendations"),
        ({"alpha_recommendations": {"fear": 1.0}}, "alpha_recommendations"),
        ({"alpha_recommendations": {"../joy": 1.0}}, "alpha_recommendations"),
        ({"alpha_scale": "log"}, "alpha_scale"),
        ({"alpha_scale": 1}, "alpha_scale"),
        ({"alpha_recommendations_scale": "huge"}, "alpha_recommendations_scale"),
        ({"validated_alpha_range": [2.0, -0.5]}, "validated_alpha_range"),
        ({"validated_alpha_range": [-0.5, float("nan")]}, "validated_alpha_range"),
        ({"model": ["toy"]}, "model"),
        ({"n_train": -1}, "n_train"),
        ({"n_train_anger_joy": 1.5}, "n_train_anger_joy"),
        ({"auc_matrix_anger_joy": [[0.5, 0.5, 0.5]]}, "auc_matrix_anger_joy"),
        ({"auc_matrix_x\u2028y": [[2.0]]}, "auc_matrix_x"),
        ({"emotions": ["anger", "joy", "sadness"] * 100}, "emotions"),
        ({"emotions": ["x" * 65, "joy", "sadness"]}, "emotions"),
        ({"emotions": []}, "emotions"),
        ({"emotions": "anger,joy,sadness"}, "emotions"),
        ({"emotions": ["anger", 7, "sadness"]}, "emotions"),
    ],
)
def test_metadata_types_are_checked_key_by_key(saved, tmp_path, changes, key):
    folder = _copy(saved, tmp_path)
    _write_meta(folder, **changes)
    _one_line_error(folder, "metadata.json", key)


@pytest.mark.parametrize("value", [None, {"joy": None}, {}])
def test_optional_keys_may_be_null_or_empty(saved, tmp_path, value):
    folder = _copy(saved, tmp_path)
    _write_meta(folder, alpha_recommendations=value, alpha_scale=None, validated_alpha_range=None, residual_norm=None,
                model=None, num_layers=None, auc_matrix=None)
    assert EmotionBundle.load(folder).emotions == EMOTIONS


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('{"emotions": ["anger"], "chosen_layers": [' + "9" * 5000 + "]}", "not valid JSON"),
        ("\xff\xfe{}", "not valid JSON"),
    ],
)
def test_hostile_json_text_is_one_line(saved, tmp_path, text, needle):
    folder = _copy(saved, tmp_path)
    (folder / "metadata.json").write_bytes(text.encode("latin-1"))
    _one_line_error(folder, "metadata.json", needle)


def test_oversized_metadata_is_refused_unread(saved, tmp_path):
    from emolab.core.bundle_checks import MAX_METADATA_BYTES

    folder = _copy(saved, tmp_path)
    with open(folder / "metadata.json", "wb") as fh:
        fh.truncate(MAX_METADATA_BYTES + 10)
    _one_line_error(folder, "metadata.json", "larger than")


@pytest.mark.parametrize("name", ["metadata.json", "joy_chosen.npy"])
def test_fifo_is_refused_without_blocking(saved, tmp_path, name):
    import os

    folder = _copy(saved, tmp_path)
    (folder / name).unlink()
    os.mkfifo(folder / name)  # opening it to read would block until a writer came
    _one_line_error(folder, name, "not a regular file")


def test_symlink_loop_is_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / "joy_chosen.npy").unlink()
    (folder / "joy_chosen.npy").symlink_to(folder / "joy_chosen.npy")
    _one_line_error(folder, "joy_chosen.npy", "symlink loop")


def _npy_with_header(shape: tuple[int, ...], data: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


@pytest.mark.parametrize(
    ("shape", "data", "needle"),
    [
        ((2, 10**12), b"\0" * 32, "array of shape"),  # refused from the header: nothing is allocated
        ((2, 4), b"\0" * 31, "data bytes"),
        ((2, 4), b"\0" * 40, "data bytes"),  # trailing bytes: np.save never writes them
        ((-2, 4), b"", "array of shape"),
    ],
)
def test_npy_header_is_checked_before_the_data_is_read(saved, tmp_path, shape, data, needle):
    folder = _copy(saved, tmp_path)
    (folder / "joy_chosen.npy").write_bytes(_npy_with_header(shape, data))
    _one_line_error(folder, "joy_chosen.npy", needle)


def test_big_float64_values_are_refused_before_the_float32_cast(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    np.save(folder / "joy_chosen.npy", np.full((2, 4), 1e300))  # would become inf as float32
    _one_line_error(folder, "joy_chosen.npy", "exceeds")


def test_other_float_dtypes_load_as_float32(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    np.save(folder / "joy_chosen.npy", make_bundle().vectors["joy"].astype(">f8"))
    np.save(folder / "anger_chosen.npy", make_bundle().vectors["anger"].astype(np.float16))
    bundle = EmotionBundle.load(folder)
    assert {v.dtype for v in bundle.vectors.values()} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(bundle.vectors["joy"], make_bundle().vectors["joy"])


def test_tiny_vectors_still_have_a_finite_normalized_basis(smollm2_bundle_path, tmp_path):
    folder = _copy(smollm2_bundle_path, tmp_path)
    np.save(folder / "joy_chosen.npy", np.load(folder / "joy_chosen.npy") * np.float32(1e-42))  # float32 denormals
    bundle = EmotionBundle.load(folder)
    basis = bundle.steering_basis("normalized")
    assert np.isfinite(basis).all()
    norms = dict(zip(bundle.chosen_layers, bundle.residual_norms(), strict=True))
    want = [0.1 * norms[L] if L in bundle.layers_of("joy") else 0.0 for L in bundle.chosen_layers]  # zero: not steered
    np.testing.assert_allclose(np.linalg.norm(basis[:, bundle.emotions.index("joy")], axis=1), want, rtol=1e-3)


def test_vector_bound_relative_to_residual_norm(smollm2_bundle_path, tmp_path):
    from emolab.core.bundle_checks import MAX_VECTOR_TO_RESIDUAL

    folder = _copy(smollm2_bundle_path, tmp_path)
    bundle = EmotionBundle.load(folder)
    residual = np.array(bundle.residual_norms())  # at the chosen layers
    direction = np.zeros((len(residual), 576), np.float32)
    direction[[bundle.chosen_layers.index(L) for L in bundle.layers_of("joy")], 0] = 1.0  # only where joy steers
    np.save(folder / "joy_chosen.npy", direction * (0.99 * MAX_VECTOR_TO_RESIDUAL * residual[:, None]).astype(np.float32))
    EmotionBundle.load(folder)  # just inside the bound
    np.save(folder / "joy_chosen.npy", direction * (1.01 * MAX_VECTOR_TO_RESIDUAL * residual[:, None]).astype(np.float32))
    _one_line_error(folder, "joy_chosen.npy", "residual_norm")


def test_real_bundles_sit_far_inside_the_magnitude_bounds(smollm2_bundle_path, reference_bundle_path):
    """The bounds leave orders of magnitude of room for real extractions (numbers in bundle_checks)."""
    from emolab.core.bundle_checks import MAX_ABS_COMPONENT, MAX_RESIDUAL_NORM, MAX_VECTOR_TO_RESIDUAL

    smollm2 = EmotionBundle.load(smollm2_bundle_path)
    ratios = np.linalg.norm(smollm2.basis(), axis=2) / np.array(smollm2.residual_norms())[:, None]
    assert ratios.max() < MAX_VECTOR_TO_RESIDUAL / 50
    assert max(smollm2.metadata["residual_norm"]) < MAX_RESIDUAL_NORM / 1000
    for bundle in (smollm2, EmotionBundle.load(reference_bundle_path)):
        assert np.abs(bundle.basis()).max() < MAX_ABS_COMPONENT / 500


def test_per_emotion_layers_keep_zeros_zero_on_both_scales(tmp_path):
    rng = np.random.default_rng(7)
    layers = [4, 5, 6]
    vectors = {e: rng.normal(size=(3, 8)).astype(np.float32) for e in ("anger", "joy")}
    vectors["anger"][[0, 2]] = 0.0  # anger steers layer 5 only
    meta = {"num_layers": 12, "emotion_layers": {"anger": [5]}, "search_layers": [3, 4, 5, 6],
            "residual_norm": [10.0, 20.0, 30.0, 40.0]}
    bundle = EmotionBundle(["anger", "joy"], layers, vectors, meta)
    loaded = EmotionBundle.load(bundle.save(tmp_path / "b"))
    assert loaded.layers_of("anger") == [5] and loaded.layers_of("joy") == layers
    assert loaded.steering_mask().tolist() == [[False, True], [True, True], [False, True]]
    for scale in ("raw", "normalized"):
        basis = loaded.steering_basis(scale)
        assert not basis[[0, 2], 0].any() and basis[1, 0].any() and basis[:, 1].all(axis=1).any()
    lengths = np.linalg.norm(loaded.steering_basis("normalized"), axis=2)
    np.testing.assert_allclose(lengths[1], [3.0, 3.0], rtol=1e-6)  # 0.1 x residual norm 30 at layer 5
    assert loaded.alpha_scale == "normalized"  # residual_norm recorded: the project default


def test_per_emotion_layers_must_agree_with_the_vectors(tmp_path):
    vectors = {e: np.ones((2, 4), dtype=np.float32) for e in ("anger", "joy")}
    folder = EmotionBundle(["anger", "joy"], [1, 2], vectors, {"emotion_layers": {"anger": [2]}}).save(tmp_path / "b")
    with pytest.raises(BundleError, match=r"anger_chosen.npy: non-zero at layers \[1\]"):
        EmotionBundle.load(folder)
    bad = json.loads((folder / "metadata.json").read_text())
    for value, words in (({"anger": [3]}, "not among 'chosen_layers'"), ({"rage": [1]}, "not one of the bundle's"),
                         ([1, 2], "must be an object"), ({"anger": []}, "emotion_layers")):
        (folder / "metadata.json").write_text(json.dumps({**bad, "emotion_layers": value}))
        with pytest.raises(BundleError, match=words):
            EmotionBundle.load(folder)
    # null means what absent means: every emotion steers every chosen layer.
    (folder / "metadata.json").write_text(json.dumps({**bad, "emotion_layers": None}))
    loaded = EmotionBundle.load(folder)
    assert loaded.layers_of("anger") == [1, 2] and loaded.steering_mask().all()
