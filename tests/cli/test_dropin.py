"""The CLI as the reference tool's users meet it: the ``emotion-steering`` program, its flags and short
options, its defaults where its README relies on them, and the bundle/model name check of ``serve``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import other_model_bundle as qwen_named_bundle

from emolab.cli import build_parser, emotion_steering, main

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "goemotions"


def run(entry, argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = entry(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# The reference CLI's options (src/emotion_steering/cli.py), short and long, as its users type them.
REFERENCE_FORMS = [
    (["extract", "-m", "M", "-e", "anger,joy", "-o", "out", "-l", "mid"],
     ["extract", "--model", "M", "--emotions", "anger,joy", "--output", "out", "--layers", "mid"]),
    (["extract", "--search-layers", "16,17", "--window", "1", "--batch-size", "8", "--max-length", "256",
      "--test-size", "0.2", "--seed", "42", "--dtype", "float16", "--device", "cpu", "--no-save-full-sweep"], None),
    (["extract", "--layer", "20"], None),
    (["test", "./vectors", "--no-norms"], None),
    (["serve", "-v", "./vectors", "-m", "Qwen/Qwen3-8B", "-b", "hf", "--host", "0.0.0.0", "--port", "8000",
      "--api-key", "k", "--dtype", "bfloat16", "--max-model-len", "8192", "--gpu-memory-utilization", "0.9",
      "--max-num-seqs", "32"],
     ["serve", "--vectors", "./vectors", "--model", "Qwen/Qwen3-8B", "--backend", "hf", "--host", "0.0.0.0",
      "--port", "8000", "--api-key", "k", "--dtype", "bfloat16", "--max-model-len", "8192",
      "--gpu-memory-utilization", "0.9", "--max-num-seqs", "32"]),
    (["test-http", "-u", "http://localhost:8000", "-k", "KEY", "--model", "qwen3-8b", "--prompt", "p",
      "--max-tokens", "120", "--alpha", "1.5", "--no-thinking"],
     ["test-http", "--base-url", "http://localhost:8000", "--api-key", "KEY", "--model", "qwen3-8b", "--prompt", "p",
      "--max-tokens", "120", "--alpha", "1.5", "--no-thinking"]),
    (["test-http", "--base-url", "http://localhost:8000", "--thinking"], None),
]


@pytest.mark.parametrize(("short", "long"), REFERENCE_FORMS, ids=lambda forms: " ".join(forms[:2]) if forms else "")
def test_reference_flags_parse_under_both_programs(short, long):
    for prog in ("emolab", "emotion-steering"):
        parsed = vars(build_parser(prog).parse_args(short))
        if long is not None:
            assert parsed == vars(build_parser(prog).parse_args(long))


def test_program_name_in_usage_and_error_lines(capsys, tmp_path):
    code, _, err = run(emotion_steering, ["extract", "--window", "0"], capsys)
    assert code == 2 and "usage: emotion-steering extract" in err and "emotion-steering extract: error: " in err
    code, _, err = run(emotion_steering, ["test", str(tmp_path / "nothing")], capsys)
    assert code == 2 and err.startswith("emotion-steering test: error: ") and "no such bundle folder" in err
    code, _, err = run(main, ["test", str(tmp_path / "nothing")], capsys)
    assert code == 2 and err.startswith("emolab test: error: ")
    code, out, _ = run(emotion_steering, ["--help"], capsys)
    assert code == 0 and out.startswith("usage: emotion-steering")


def test_one_layer_selector_at_a_time(capsys):
    for argv in (["--layer", "2", "--layers", "mid"], ["--layers", "mid", "--search-layers", "1,2"]):
        code, _, err = run(emotion_steering, ["extract", *argv], capsys)
        assert code == 2 and "not allowed with argument" in err


def test_extract_as_emotion_steering_writes_dot_vectors_and_records_the_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["extract", "-m", "tiny-qwen3", "--data", str(FIXTURE_DIR), "-e", "anger,joy,sadness", "--no-progress",
            "--batch-size", "7", "--search-layers", "1,2,3", "--window", "2"]
    code, out, err = run(emotion_steering, argv, capsys)
    assert code == 0, err
    assert "saved bundle to ./vectors" in out  # the reference tool's --output default
    meta = json.loads((tmp_path / "vectors" / "metadata.json").read_text())
    assert (meta["batch_size"], meta["layers"], meta["search_layers"]) == (7, "1,2,3", [1, 2, 3])
    assert meta["mean_micro_auc_chosen"] == meta["chosen_mean_auc"]  # the reference tool's key, kept too

    code, out, _ = run(emotion_steering, ["test", "./vectors"], capsys)
    assert code == 0 and "L2 norm" in out and "ROC-AUC" in out
    code, out, _ = run(emotion_steering, ["test", "./vectors", "--no-norms"], capsys)
    assert code == 0 and "L2 norm" not in out and "ROC-AUC" in out


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_strict_model_refuses_a_bundle_of_another_model_with_one_line(backend, tmp_path, capsys):
    bundle = qwen_named_bundle(tmp_path / "b")
    code, out, err = run(main, ["serve", "-v", str(bundle), "-m", "tiny-llama", "-b", backend, "--port", "9",
                                "--strict-model"], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("emolab serve: error: --strict-model: ")
    assert "'Qwen/Qwen3-8B'" in lines[0] and "'tiny-llama'" in lines[0]


def test_a_bundle_of_another_model_is_a_warning_by_default(tmp_path, monkeypatch, capsys):
    from emolab.serve import hf_backend

    def stop(*args, **kwargs):
        raise RuntimeError("stopped before loading the model")

    monkeypatch.setattr(hf_backend.HFBackend, "load", stop)
    bundle = qwen_named_bundle(tmp_path / "b")
    code, _, err = run(emotion_steering, ["serve", "-v", str(bundle), "-m", "tiny-llama", "-b", "hf"], capsys)
    assert code == 2 and "stopped before loading the model" in err  # it went on past the check
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("emotion-steering serve: warning: ")
    assert "'Qwen/Qwen3-8B'" in warnings[0] and "'tiny-llama'" in warnings[0] and "--strict-model" in warnings[0]
    # The same model under another spelling, or a bundle that names no model: not a word.
    for model in ("tiny-llama", None):
        code, _, err = run(main, ["serve", "-v", str(qwen_named_bundle(tmp_path / f"b-{model}", model)),
                                  "-m", "tiny-llama", "-b", "hf", "--strict-model"], capsys)
        assert code == 2 and "warning" not in err and "stopped before loading the model" in err
