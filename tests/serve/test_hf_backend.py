"""The HF backend in-process: chat templates, lengths, and refusing a bundle that does not fit."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from emolab.core.bundle import BundleError, EmotionBundle
from emolab.serve.contract import APIError
from emolab.serve.hf_backend import HFBackend


@pytest.fixture(scope="module")
def qwen_backend(tiny_qwen3_path):
    vectors = {e: np.ones((1, 128), dtype=np.float32) for e in ("joy", "fear")}
    bundle = EmotionBundle(emotions=["joy", "fear"], chosen_layers=[2], vectors=vectors, metadata={"num_layers": 4})
    return HFBackend.load(str(tiny_qwen3_path), bundle, max_model_len=64)


def test_chat_template_kwargs_reach_qwen3s_template(qwen_backend):
    messages = [{"role": "user", "content": "hi"}]
    decode = qwen_backend.tokenizer.decode
    plain = decode(qwen_backend.chat_prompt(messages))
    off = decode(qwen_backend.chat_prompt(messages, {"enable_thinking": False}))
    assert off == plain + "<think>\n\n</think>\n\n"
    with pytest.raises(APIError, match="may not set"):
        qwen_backend.chat_prompt(messages, {"tokenize": True})


def test_lengths(qwen_backend):
    assert qwen_backend.check_lengths([1] * 10, None) == 54  # what is left of --max-model-len 64
    assert qwen_backend.check_lengths([1] * 10, 54) == 54
    for ids, max_tokens in (([1] * 10, 55), ([1] * 64, None), ([], 5)):
        with pytest.raises(APIError) as info:
            qwen_backend.check_lengths(ids, max_tokens)
        assert info.value.status == 400


def test_a_bundle_that_does_not_fit_is_refused(tiny_qwen3_path, smollm2_bundle_path, tmp_path):
    bundle = EmotionBundle.load(smollm2_bundle_path)
    with pytest.raises(BundleError, match="hidden size 576 does not fit the model's hidden size 128"):
        HFBackend.load(str(tiny_qwen3_path), bundle)
    done = subprocess.run([sys.executable, "-m", "emolab.cli", "serve", "--backend", "hf", "--model",
                           str(tiny_qwen3_path), "--vectors", str(smollm2_bundle_path), "--port", "9"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "hidden size 576 does not fit" in done.stderr
