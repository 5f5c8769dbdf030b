"""The HF backend answers to every served name (``--model``, its short name, each ``--served-model-name``),
lists them in ``/v1/models`` and reports the first as ``/v1/emotions``' ``model``; other names get 404."""

from __future__ import annotations

import numpy as np
import pytest
from starlette.testclient import TestClient

from emolab.core.bundle import EmotionBundle
from emolab.core.names import served_model_names
from emolab.serve.hf_app import create_app
from emolab.serve.hf_backend import HFBackend

NAMES = served_model_names("Org/Tiny-Llama", ["first", "second"])
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client(tiny_llama_path):
    rng = np.random.default_rng(0)
    bundle = EmotionBundle(emotions=["anger", "joy"], chosen_layers=[1],
                           vectors={e: rng.normal(size=(1, 128)).astype(np.float32) for e in ("anger", "joy")},
                           metadata={"model": "tiny-llama", "num_layers": 4})
    backend = HFBackend.load(str(tiny_llama_path), bundle, dtype="float32", device="cpu", max_model_len=128)
    with TestClient(create_app(backend, bundle, served_model_names=NAMES)) as test_client:
        yield test_client


def test_names_are_the_served_ones_then_the_model_and_its_short_name():
    assert NAMES == ("first", "second", "Org/Tiny-Llama", "tiny-llama")


def test_models_lists_every_name_and_emotions_reports_the_first(client):
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == list(NAMES)
    info = client.get("/v1/emotions").json()
    assert info["model"] == "first" and info["bundle_model"] == "tiny-llama"
    assert info["metadata"]["model"] == "tiny-llama"  # the reference tool's 'metadata' key


@pytest.mark.parametrize("name", [*NAMES, None])
def test_every_name_is_answered(client, name):
    body = {"messages": MESSAGES, "max_tokens": 2, "temperature": 0, "vllm_xargs": {"steering": ["joy", 1.0]}}
    if name is not None:
        body["model"] = name
    reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == (name or "first")


@pytest.mark.parametrize("name", ["qwen3-8b", "Tiny-Llama", "org/tiny-llama"])
def test_other_names_get_404_listing_the_served_ones(client, name):
    reply = client.post("/v1/chat/completions", json={"model": name, "messages": MESSAGES, "max_tokens": 2})
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert error["code"] == "model_not_found" and all(n in error["message"] for n in NAMES)
