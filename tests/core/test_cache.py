"""A cache that cannot be written is one error naming the folder and the variable, before any model or data loads;
work that never writes a Hugging Face cache (an offline local model, local data) runs without a writable one.

Tests run as root, whom permission bits do not stop, so the unwritable cache is a path beneath a regular file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emolab.core.cache import CacheError, check_hf_cache, unwritable_reason
from emolab.core.models import check_model_cache, load_model

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURE_DIR = ROOT / "tests" / "fixtures" / "goemotions"
HF_VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "XDG_CACHE_HOME")


@pytest.fixture
def blocked(tmp_path, monkeypatch) -> Path:
    """HF_HOME beneath a regular file (nothing can be created there, not even by root); the hub online."""
    (tmp_path / "file").write_text("a regular file")
    home = tmp_path / "file" / "hf"
    for name in HF_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    return home


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if a tokenizer, a model or a dataset starts loading."""
    import datasets
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("something was loaded before the cache check")

    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
    monkeypatch.setattr(datasets, "load_dataset", refuse)


def test_the_error_names_the_folder_and_the_variable(blocked, tmp_path, monkeypatch):
    assert unwritable_reason(blocked / "hub") == f"{tmp_path / 'file'} is a file, not a folder"
    assert unwritable_reason(tmp_path / "new" / "deep") is None  # missing folders are made by whoever writes
    with pytest.raises(CacheError) as info:
        check_hf_cache(hub=True)
    assert str(blocked / "hub") in str(info.value) and "HF_HUB_CACHE" in str(info.value) and "HF_HOME" in str(info.value)
    with pytest.raises(CacheError) as info:
        check_hf_cache(datasets=True)
    assert str(blocked / "datasets") in str(info.value) and "HF_DATASETS_CACHE" in str(info.value)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ok"))  # the datasets cache alone moved elsewhere
    check_hf_cache(datasets=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "file" / "hub"))
    with pytest.raises(CacheError, match=f"{tmp_path / 'file' / 'hub'} cannot be written"):
        check_hf_cache(hub=True)


def test_a_hub_model_fails_before_loading(blocked, nothing_loads, tmp_path, monkeypatch):
    from emolab.extraction import ExtractConfig, extract, pipeline

    t0 = time.perf_counter()
    with pytest.raises(CacheError, match="HF_HUB_CACHE"):
        load_model("someone/some-model")
    monkeypatch.setattr(pipeline, "load_records", lambda *a, **k: pytest.fail("the data loaded before the cache check"))
    with pytest.raises(CacheError) as info:
        extract(ExtractConfig(model="someone/some-model", data=str(FIXTURE_DIR), progress=False))
    assert str(blocked / "hub") in str(info.value)
    assert time.perf_counter() - t0 < 2.0


def test_what_never_writes_the_hub_cache_is_not_checked(blocked, tiny_qwen3_path, monkeypatch):
    check_model_cache(str(tiny_qwen3_path))  # a local folder, online or not
    check_model_cache("smollm2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_model_cache("someone/some-model")  # offline: the cached copy is only read


def test_a_hub_dataset_fails_before_loading_and_auto_falls_back(blocked, nothing_loads, monkeypatch, capsys):
    from emolab.extraction.data import load_records

    with pytest.raises(CacheError) as info:
        load_records("someone/some-dataset")
    assert str(blocked / "datasets") in str(info.value) and "HF_DATASETS_CACHE" in str(info.value)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # offline, datasets still takes its lock files in its cache
    with pytest.raises(CacheError, match="HF_DATASETS_CACHE"):
        load_records("someone/some-dataset", ("dev",))
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", datasets.load.load_dataset)  # the bundled copy may load now
    capsys.readouterr()
    _, source = load_records("auto")  # the hub is unusable: the bundled copy, with one line saying why
    notice = capsys.readouterr().err.splitlines()
    assert source.startswith("bundled:") and len(notice) == 1
    assert "bundled copy" in notice[0] and "HF_DATASETS_CACHE" in notice[0] and str(blocked / "datasets") in notice[0]


def test_an_unwritable_emolab_cache_is_named_too(tmp_path, monkeypatch):
    from emolab.extraction.data import load_records

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("EMOLAB_CACHE", str(tmp_path / "file" / "emolab"))
    with pytest.raises(CacheError, match=f"{tmp_path / 'file' / 'emolab' / 'datasets'} cannot be written.*EMOLAB_CACHE"):
        load_records(str(FIXTURE_DIR))


def test_an_offline_local_model_extracts_with_an_unwritable_hf_cache(tiny_qwen3_path, tmp_path):
    """The embedded path end to end in a fresh process (the libraries read the cache variables at import):
    a local model folder and the bundled data, HF_HOME beneath a regular file."""
    (tmp_path / "file").write_text("")
    env = {k: v for k, v in os.environ.items() if k not in HF_VARIABLES}
    env.update(HF_HOME=str(tmp_path / "file" / "hf"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = tmp_path / "bundle"
    done = subprocess.run(
        [sys.executable, "-m", "emolab.cli", "extract", "--model", str(tiny_qwen3_path), "--data", "bundled",
         "--emotions", "anger,joy", "--max-per-class", "10", "--layers", "all", "--window", "1", "--max-length", "32",
         "--no-progress", "--output", str(out)],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "metadata.json").is_file()
