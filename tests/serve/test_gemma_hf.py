"""Gemma 3 270M (a base model, no chat template) on the HF backend, over real HTTP with the openai client:
/v1/completions steered greedy == hand-made hooks, chat refused with a 400 that says what to do, and chat
through a template the user gives (--chat-template) steered == hand-made hooks, one <bos> each time."""

from __future__ import annotations

import openai
import pytest
from conftest import running_server
from gemma_serving import check_chat_refused, check_chat_with_template, check_completions, write_template

pytestmark = pytest.mark.slow

KEY = "test-key-gemma"


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=600)


def test_completions_steer_and_chat_is_refused_without_a_template(gemma3_path, gemma3_bundle_path, gemma3_reference, gemma3_bundle):
    with running_server(vectors=gemma3_bundle_path, model="gemma3-270m", api_key=KEY,
                        extra_args=["--dtype", "float32", "--log-level", "warning"]) as url:
        client = client_for(url)
        check_completions(client, "gemma3-270m", gemma3_reference, gemma3_bundle)
        check_chat_refused(client, "gemma3-270m")


def test_chat_through_a_user_template(gemma3_path, gemma3_bundle_path, gemma3_reference, gemma3_bundle, tmp_path):
    template = write_template(tmp_path)
    with running_server(vectors=gemma3_bundle_path, model="gemma3-270m", api_key=KEY,
                        extra_args=["--dtype", "float32", "--log-level", "warning", "--chat-template", str(template)]) as url:
        check_chat_with_template(client_for(url), "gemma3-270m", gemma3_reference, gemma3_bundle)
