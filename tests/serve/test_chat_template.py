"""Chat on a model without a chat template (a base model): one shared 400 for both backends (the HF app and
the vLLM middleware build their contract with ``chat=False``), the setting's round trip through the
environment the vLLM processes read, and ``--chat-template`` refused clearly when its file cannot work."""

from __future__ import annotations

import pytest

from emolab.cli import main
from emolab.core.steering import SteeringLimits
from emolab.serve.contract import APIError
from emolab.serve.schema import CHAT_PATH, COMPLETIONS_PATH, NO_CHAT_TEMPLATE, RequestContract, validate_generation
from emolab.serve.settings import ServeSettings

CHAT = {"model": "gemma3-270m", "messages": [{"role": "user", "content": "Hi"}], "vllm_xargs": {"steering": ["joy", 1]}}
COMPLETION = {"model": "gemma3-270m", "prompt": "Once upon a time", "vllm_xargs": {"steering": ["joy", 1]}}


def contract(chat: bool) -> RequestContract:
    return RequestContract(("anger", "joy"), SteeringLimits(), ("gemma3-270m",), chat=chat)


def test_chat_without_a_template_is_one_clear_400():
    with pytest.raises(APIError) as info:
        validate_generation(dict(CHAT), CHAT_PATH, contract(chat=False))
    error = info.value
    assert (error.status, error.param, error.code, error.message) == (400, "messages", "no_chat_template",
                                                                       NO_CHAT_TEMPLATE)
    assert "/v1/completions" in error.message and "--chat-template" in error.message
    # Completions are what a base model serves; with a template chat passes too.
    assert validate_generation(dict(COMPLETION), COMPLETIONS_PATH, contract(chat=False)).pairs == [(1, 1.0)]
    assert validate_generation(dict(CHAT), CHAT_PATH, contract(chat=True)).pairs == [(1, 1.0)]
    # The model name is checked first: a wrong model is still a 404, not a template complaint.
    with pytest.raises(APIError) as info:
        validate_generation({**CHAT, "model": "other"}, CHAT_PATH, contract(chat=False))
    assert info.value.status == 404


def test_the_chat_setting_reaches_the_vllm_processes(tmp_path):
    settings = ServeSettings(vectors="v", chat=False, chat_template=str(tmp_path / "t.jinja"))
    env = settings.to_env()
    assert env["EMOLAB_CHAT"] == "0" and env["EMOLAB_CHAT_TEMPLATE"] == str(tmp_path / "t.jinja")
    assert ServeSettings.from_env(env) == ServeSettings(vectors="v", chat=False, chat_template=str(tmp_path / "t.jinja"),
                                                        backend="hf")
    plain = ServeSettings(vectors="v").to_env()
    assert plain["EMOLAB_CHAT"] == "1" and "EMOLAB_CHAT_TEMPLATE" not in plain
    assert ServeSettings.from_env({"EMOLAB_VECTORS": "v"}).chat  # plain `vllm serve` + middleware: vLLM decides


@pytest.mark.parametrize(("content", "words"), [(None, "cannot read"), ("  \n", "is empty")])
def test_a_chat_template_file_that_cannot_work_is_one_error_line(tmp_path, smollm2_bundle_path, capsys, content, words):
    path = tmp_path / "template.jinja"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as info:
        main(["serve", "--vectors", str(smollm2_bundle_path), "--model", "smollm2", "--backend", "hf",
              "--chat-template", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--chat-template" in err[-1] and words in err[-1]
