"""The ``emolab`` command's extract/test/build-model parts: flag errors, exit codes, output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "goemotions"




@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--window", "0"], "--window"),
        (["--window", "two"], "--window"),
        (["--batch-size", "0"], "--batch-size"),
        (["--max-length", "-3"], "--max-length"),
        (["--max-per-class", "0"], "--max-per-class"),
        (["--test-size", "1.5"], "--test-size"),
        (["--test-size", "0"], "--test-size"),
        (["--test-size", "a fifth"], "--test-size"),
        (["--dtype", "fp8"], "--dtype"),
        (["--emotions", "anger,happiness"], "--emotions"),
        (["--emotions", "anger"], "--emotions"),
        (["--layers", "middle"], "--layers"),
        (["--layers", "mid,x"], "--layers"),
        (["--layers", ","], "--layers"),
        (["--layer", "-1"], "--layer"),
        (["--layer", "x"], "--layer"),
        (["--learn-steps", "3"], "--learn-steps"),  # only the learned method learns
        (["--method", "learned", "--learn-layers", "1-x"], "--learn-layers"),
        (["--method", "learned", "--learn-alpha", "0"], "--learn-alpha"),
        (["--method", "learned", "--learn-pairs", "4", "--learn-batch", "8"], "--learn-batch"),
    ],
)
def test_bad_extract_flags_name_the_flag(argv, flag, capsys):
    # None of these may load data or a model: the default model is not available offline.
    code, out, err = run_cli(["extract", *argv], capsys)
    assert code == 2
    assert flag in err
    assert "Traceback" not in err


def test_layers_out_of_range_and_unknown_model_are_clear_errors(tmp_path, capsys):
    argv = ["extract", "--model", "tiny-qwen3", "--data", str(FIXTURE_DIR), "--emotions", "anger,joy,sadness"]
    code, _, err = run_cli([*argv, "--layers", "4", "--output", str(tmp_path / "a")], capsys)
    assert code == 2 and "--layers: layer 4 outside 0..3" in err
    code, _, err = run_cli([*argv, "--layers", "1,2", "--window", "3", "--output", str(tmp_path / "b")], capsys)
    assert code == 2 and "--window: a window of 3 layers is wider than the 2 searched layers" in err
    code, _, err = run_cli(["extract", "--model", str(tmp_path / "no-model"), "--data", str(FIXTURE_DIR),
                             "--emotions", "anger,joy", "--output", str(tmp_path / "c")], capsys)
    assert code == 2 and "--model" in err and "no-model" in err
    code, _, err = run_cli([*argv, "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "d")], capsys)
    assert code == 2 and "--data" in err
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_extract_on_tiny_qwen3_then_inspect(tmp_path, capsys):
    out = tmp_path / "bundle"
    code, stdout, err = run_cli(
        ["extract", "--model", "tiny-qwen3", "--data", str(FIXTURE_DIR), "--emotions", "anger,joy,sadness",
         "--layers", "all", "--window", "2", "--test-size", "0.4", "--seed", "1", "--no-save-full-sweep",
         "--no-progress", "--output", str(out)],
        capsys,
    )
    assert code == 0, err
    assert f"saved bundle to {out}" in stdout and "validation ROC-AUC" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["anger_chosen.npy", "arousal_derived.npy", "joy_chosen.npy",
                                                     "metadata.json", "sadness_chosen.npy", "valence_derived.npy"]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model"] == "tiny-qwen3" and meta["search_layers"] == [0, 1, 2, 3] and meta["seed"] == 1
    assert len(meta["chosen_layers"]) == 2 and meta["dtype"] == "float32"

    code, stdout, _ = run_cli(["test", str(out), "--json"], capsys)
    assert code == 0
    info = json.loads(stdout)
    assert info["chosen_layers"] == meta["chosen_layers"] and info["hidden"] == 128
    assert info["norms"]["joy"] == pytest.approx(np.linalg.norm(np.load(out / "joy_chosen.npy"), axis=1).tolist())

    one = tmp_path / "one-layer"
    code, _, err = run_cli(["extract", "--model", "tiny-qwen3", "--data", str(FIXTURE_DIR), "--emotions",
                             "anger,joy", "--layer", "2", "--no-progress", "--output", str(one)], capsys)
    assert code == 0, err
    meta = json.loads((one / "metadata.json").read_text())
    assert meta["search_layers"] == [2] and meta["chosen_layers"] == [2] and meta["window"] == 1
    assert np.load(one / "anger_full_sweep.npy").shape == (1, 128)


def test_learned_extraction_from_the_command_line(tmp_path, capsys):
    argv = ["extract", "--model", "tiny-qwen3", "--data", str(FIXTURE_DIR), "--emotions", "anger,joy", "--layers",
            "all", "--window", "2", "--no-progress", "--method", "learned", "--learn-pairs", "4", "--learn-batch", "2",
            "--learn-steps", "2", "--learn-layers", "1,2"]
    code, _, err = run_cli([*argv, "--output", str(tmp_path / "dev")], capsys)  # the fixture has no dev split
    assert code == 2 and "dev" in err and "Traceback" not in err
    code, _, err = run_cli([*argv, "--learn-split", "train", "--output", str(tmp_path / "ok")], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "ok" / "metadata.json").read_text())
    assert meta["method"] == "learned" and meta["learned"]["window"] == [1, 2]
    assert (meta["learned"]["steps"], meta["learned"]["pairs"], meta["learned"]["split"]) == (2, 4, "train")


def test_inspect_reference_bundle_as_json(reference_bundle_path):
    result = subprocess.run(
        [sys.executable, "-m", "emolab.cli", "test", str(reference_bundle_path), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["model"] == "Qwen/Qwen3-8B"
    assert info["emotions"] == ["anger", "joy", "sadness", "disgust", "fear", "surprise"]
    assert info["chosen_layers"] == [20, 21, 22] and info["hidden"] == 4096
    assert info["search_layers"] == list(range(16, 28))
    assert (info["n_train"], info["n_val"]) == (7274 + 1591, 1819 + 398)
    assert np.asarray(info["auc_matrix"]).shape == (12, 6)
    assert info["auc_matrix"][0][:3] == [0.7976, 0.8697, 0.8092]
    assert info["auc_matrix"][0][3:] == [0.848, 0.851, 0.903]
    assert len(info["norms"]["fear"]) == 3


def test_inspect_prints_tables(reference_bundle_path, capsys):
    code, out, _ = run_cli(["test", str(reference_bundle_path)], capsys)
    assert code == 0
    for needle in ("Qwen/Qwen3-8B", "[20, 21, 22]", "8865", "*21", "L2 norm", "L22"):
        assert needle in out, needle


def test_inspect_broken_bundle_is_one_clear_error(reference_bundle_path, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(reference_bundle_path, broken)
    np.save(broken / "fear_chosen.npy", np.zeros((2, 4096), np.float32))
    code, out, err = run_cli(["test", str(broken)], capsys)
    assert code == 2
    assert err.count("error") == 1 and "fear_chosen.npy" in err and "Traceback" not in err
    code, _, err = run_cli(["test", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "no such bundle folder" in err


def test_build_model_prints_the_folder(tiny_qwen3_path, capsys):
    code, out, _ = run_cli(["build-model", "tiny-qwen3"], capsys)
    assert code == 0 and out.strip() == str(tiny_qwen3_path)
    code, _, err = run_cli(["build-model", "gpt5"], capsys)
    assert code == 2 and "name" in err


@pytest.mark.parametrize("key", [" padded", "trailing ", "naïve"])
def test_serve_refuses_a_key_no_client_could_send(key, smollm2_bundle_path, monkeypatch, capsys):
    monkeypatch.delenv("EMOLAB_API_KEY", raising=False)
    code, _, err = run_cli(["serve", "--vectors", str(smollm2_bundle_path), "--model", "smollm2", "--backend", "hf",
                             "--api-key", key], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "API key" in lines[0], err
