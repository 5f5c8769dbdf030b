"""The plugin's own bundle/model name check, for users of plain ``vllm serve`` / ``vllm.LLM``: it runs in
``install`` right after the shape check, warns in vLLM's log by default, refuses under
``EMOLAB_MODEL_CHECK=strict`` and is silent under ``off`` (what ``emolab serve`` passes after checking)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from conftest import other_model_bundle

from emolab.core.bundle import ModelMismatchError
from emolab.fastpath.plugin import install


class Config:
    def __init__(self, name: str, hf_config) -> None:
        self.model_config = SimpleNamespace(model=name, enforce_eager=True, hf_config=hf_config, hf_text_config=hf_config)

    @property
    def compilation_config(self):  # the first thing install reads after the check (sizing its buffers)
        raise LookupError("past the check")


class Runner:
    """Just enough of a model runner for ``install`` to reach the check; it stops right after it."""

    def __init__(self, model, name: str) -> None:
        self.model = model
        self.vllm_config = Config(name, model.config)

    def get_model(self):
        return self.model


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_path):
    from emolab.core.models import load_model

    return load_model(str(tiny_llama_path), dtype="float32", device="cpu")[0]


@pytest.mark.parametrize(("check", "served", "outcome"), [
    ("warn", "/models/Llama-3.1-8B", "warning"),
    ("strict", "/models/Llama-3.1-8B", "refused"),
    ("off", "/models/Llama-3.1-8B", "silent"),
    ("strict", "/hub/models--Qwen--Qwen3-8B/snapshots/0123abcd", "silent"),  # the same model, as vLLM names it
])
def test_install_checks_the_bundle_model(check, served, outcome, tiny_llama, tmp_path, monkeypatch, caplog):
    bundle = other_model_bundle(tmp_path / "bundle")  # records Qwen/Qwen3-8B, fits tiny-llama's shape
    monkeypatch.setenv("EMOLAB_VECTORS", str(bundle))
    monkeypatch.setenv("EMOLAB_MODEL_CHECK", check)
    with caplog.at_level(logging.WARNING, logger="emolab.vllm"):
        if outcome == "refused":
            with pytest.raises(ModelMismatchError, match="Qwen/Qwen3-8B"):
                install(Runner(tiny_llama, served))
        else:
            with pytest.raises(LookupError, match="past the check"):
                install(Runner(tiny_llama, served))
    warnings = [r.getMessage() for r in caplog.records if "extracted from" in r.getMessage()]
    if outcome == "warning":
        assert len(warnings) == 1 and "'Qwen/Qwen3-8B'" in warnings[0] and served in warnings[0]
        assert "EMOLAB_MODEL_CHECK=strict" in warnings[0]
    else:
        assert not warnings
