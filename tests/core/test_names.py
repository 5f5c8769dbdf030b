"""Model names: short names, which names mean the same model, the names a server answers to, and the
bundle/model name check (warn by default, refuse when strict)."""

from __future__ import annotations

import numpy as np
import pytest

from emolab.core.bundle import EmotionBundle, ModelMismatchError
from emolab.core.names import ALIAS_FOLDER_NAMES, same_model, served_model_names, short_model_name
from emolab.serve.settings import ServeSettings, SettingsError, check_bundle_model


@pytest.mark.parametrize(("name", "short"), [
    ("Qwen/Qwen3-8B", "qwen3-8b"),
    ("Qwen/Qwen3-8B/", "qwen3-8b"),
    ("smollm2", "smollm2"),
    ("/models/Qwen3-8B", "qwen3-8b"),
    ("./vectors/../models/SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
    ("/root/.cache/huggingface/hub/models--Qwen--Qwen3-8B/snapshots/b968826d9c46dd6066d109eabc6255188de91218", "qwen3-8b"),
    ("C:\\models\\Qwen3-8B", "qwen3-8b"),
    ("/hub/models--gpt2/snapshots/0123", "gpt2"),
])
def test_short_model_name(name, short):
    assert short_model_name(name) == short


@pytest.mark.parametrize(("a", "b", "same"), [
    ("Qwen/Qwen3-8B", "Qwen/Qwen3-8B", True),
    ("Qwen/Qwen3-8B", "qwen3-8b", True),
    ("Qwen/Qwen3-8B", "/srv/models/Qwen3-8B", True),
    ("Qwen/Qwen3-8B", "/hub/models--Qwen--Qwen3-8B/snapshots/abc123", True),
    ("smollm2", "/cache/emolab/models/smollm2-135m-instruct", True),  # an alias = the folder it builds
    ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", True),
    ("tiny-qwen3", "/cache/emolab/models/tiny-qwen3", True),
    ("Qwen/Qwen3-8B", "meta-llama/Llama-3.1-8B", False),  # the same shape would pass check_model
    ("Qwen/Qwen3-8B", "smollm2", False),
    ("smollm2", "tiny-llama", False),
])
def test_same_model(a, b, same):
    assert same_model(a, b) is same and same_model(b, a) is same


def test_alias_folder_names_are_the_folders_the_aliases_build(tiny_qwen3_path, tiny_llama_path, smollm2_path):
    built = {"smollm2": smollm2_path, "tiny-qwen3": tiny_qwen3_path, "tiny-llama": tiny_llama_path}
    assert {alias: path.name for alias, path in built.items()} == ALIAS_FOLDER_NAMES


@pytest.mark.parametrize(("model", "extra", "names"), [
    ("Qwen/Qwen3-8B", (), ("Qwen/Qwen3-8B", "qwen3-8b")),
    ("smollm2", (), ("smollm2",)),
    ("/m/SmolLM2", ("smollm2",), ("smollm2", "/m/SmolLM2")),  # the short name repeats the served one
    ("Qwen/Qwen3-8B", ("a", "b", "a"), ("a", "b", "Qwen/Qwen3-8B", "qwen3-8b")),
])
def test_served_model_names_primary_first(model, extra, names):
    assert served_model_names(model, extra) == names


def bundle(model: str | None) -> EmotionBundle:
    meta = {"num_layers": 4} if model is None else {"model": model, "num_layers": 4}
    return EmotionBundle(emotions=["joy"], chosen_layers=[1], vectors={"joy": np.ones((1, 8), np.float32)},
                         metadata=meta)


def test_bundle_model_mismatch_names_both_models():
    assert bundle("Qwen/Qwen3-8B").model_mismatch("/models/qwen3-8b") is None
    assert bundle(None).model_mismatch("anything") is None  # no 'model' key: nothing to compare
    problem = bundle("Qwen/Qwen3-8B").model_mismatch("meta-llama/Llama-3.1-8B")
    assert "'Qwen/Qwen3-8B'" in problem and "'meta-llama/Llama-3.1-8B'" in problem
    assert "--" not in problem  # the library never names a flag


def test_check_bundle_model_warn_strict_off():
    other = bundle("Qwen/Qwen3-8B")
    assert "Qwen/Qwen3-8B" in check_bundle_model(other, "smollm2", "warn")
    assert check_bundle_model(other, "smollm2", "off") is None
    assert check_bundle_model(other, "qwen3-8b", "strict") is None
    with pytest.raises(ModelMismatchError) as info:
        check_bundle_model(other, "smollm2", "strict")
    assert info.value.setting == "model_check"


def test_settings_carry_the_names_and_the_model_check_through_the_environment():
    settings = ServeSettings(vectors="/b", served_model_names=("Qwen/Qwen3-8B", "qwen3-8b", "x"), model_check="strict")
    env = settings.to_env()
    assert env["EMOLAB_SERVED_MODEL_NAMES"] == "Qwen/Qwen3-8B,qwen3-8b,x" and env["EMOLAB_MODEL_CHECK"] == "strict"
    back = ServeSettings.from_env(env)
    assert back.served_model_names == settings.served_model_names and back.model_check == "strict"
    assert ServeSettings.from_env({"EMOLAB_VECTORS": "/b"}).model_check == "warn"  # plain `vllm serve`
    with pytest.raises(SettingsError) as info:
        ServeSettings(vectors="/b", model_check="loud")
    assert info.value.setting == "model_check"
