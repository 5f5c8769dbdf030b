"""What ``emolab serve --backend vllm`` settles before vLLM starts (no engine is started here): a model
folder whose config still says ``quantization_config: {quant_method: gguf}`` is refused with what to do
(``auto`` falls back to the HF backend, which loads it), and the command and environment handed to vLLM
carry every served name and leave the model check to the launcher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Exec, run_cli
from conftest import other_model_bundle as qwen_named_bundle

from emolab.cli import main

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def gguf_leftover_folder(tmp_path_factory, smollm2_path) -> Path:
    """SmolLM2's plain folder (weights linked) with the config entry transformers writes after loading a GGUF."""
    folder = tmp_path_factory.mktemp("gguf-leftover") / "SmolLM2-135M-Instruct"
    folder.mkdir()
    for item in smollm2_path.iterdir():
        if item.name != "config.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((smollm2_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gguf"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder




def test_a_gguf_leftover_config_is_refused_before_vllm_starts(gguf_leftover_folder, smollm2_bundle_path, no_exec,
                                                              capsys):
    code, _, err = run_cli(["serve", "-v", str(smollm2_bundle_path), "-m", str(gguf_leftover_folder), "-b", "vllm",
                        "--port", "9"], capsys)
    assert code == 2 and not no_exec  # vLLM never started
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("emolab serve: error: --backend: ")
    for words in ("quantization_config", "gguf", "config.json", "save_pretrained", "emolab build-model smollm2",
                  "HF backend"):
        assert words in lines[0], words


def test_auto_serves_a_gguf_leftover_folder_with_the_hf_backend(gguf_leftover_folder, smollm2_bundle_path, no_exec,
                                                               monkeypatch, capsys):
    from emolab.serve import hf_server

    seen = {}
    monkeypatch.setattr(hf_server, "run_hf_server", lambda settings, **kwargs: seen.update(kwargs))
    code, out, _ = run_cli(["serve", "-v", str(smollm2_bundle_path), "-m", str(gguf_leftover_folder), "--port", "9"], capsys)
    assert code == 0 and not no_exec and seen["model"] == str(gguf_leftover_folder)
    assert "backend auto -> hf" in out and "quantization_config" in out
    from transformers import AutoModelForCausalLM  # ... and transformers loads such a folder as it is

    assert AutoModelForCausalLM.from_pretrained(gguf_leftover_folder).config.hidden_size == 576


def test_vllm_gets_every_served_name_and_the_plugin_no_second_warning(tmp_path, tiny_llama_path, no_exec, capsys):
    bundle = qwen_named_bundle(tmp_path / "b")  # fits tiny-llama's shape, names another model
    with pytest.raises(Exec):
        main(["serve", "-v", str(bundle), "-m", "tiny-llama", "-b", "vllm", "--port", "9",
              "--served-model-name", "first", "second", "--served-model-name", "third"])
    _, err = capsys.readouterr()
    assert "emolab serve: warning: " in err and "'Qwen/Qwen3-8B'" in err  # said once, by the launcher ...
    env, command = no_exec["env"], no_exec["command"]
    assert env["EMOLAB_MODEL_CHECK"] == "off"  # ... so the plugin does not repeat it in vLLM's log
    names = ["first", "second", "third", "tiny-llama"]
    at = command.index("--served-model-name")
    assert command[at + 1 : at + 1 + len(names)] == names and command[at + 1 + len(names)].startswith("--")
    assert env["EMOLAB_SERVED_MODEL_NAMES"] == ",".join(names)
    assert command[command.index("--model") + 1] == str(tiny_llama_path)
