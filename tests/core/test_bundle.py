"""Bundle save/load, the reference tool's format, and every way a bundle can be broken."""

from __future__ import annotations

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
