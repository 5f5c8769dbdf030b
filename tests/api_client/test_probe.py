"""``emolab test-http`` against a real HF-backend server process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import openai
import pytest
from conftest import running_server

from emolab.api_client import probe, v1_url

pytestmark = pytest.mark.slow

KEY = "http-client-key"


@pytest.fixture(scope="module")
def base_url(smollm2_path, smollm2_bundle_path):
    with running_server(vectors=smollm2_bundle_path, model="smollm2", api_key=KEY,
                        extra_args=["--log-level", "warning"]) as url:
        yield url


def run_cli(*args: str, key_env: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("EMOLAB_API_KEY", "EMOTION_STEERING_API_KEY")}
    if key_env:
        env["EMOTION_STEERING_API_KEY"] = key_env  # the reference tool's variable works too
    return subprocess.run([sys.executable, "-m", "emolab.cli", "test-http", *args], env=env, capture_output=True,
                          text=True, timeout=900)


def test_v1_url():
    assert v1_url("http://h:1") == v1_url("http://h:1/") == v1_url("http://h:1/v1/") == "http://h:1/v1"


def test_test_http_runs_green(base_url):
    done = run_cli("--base-url", base_url, "--max-tokens", "2", "--alpha", "3", "--no-thinking", key_env=KEY)
    assert done.returncode == 0, done.stdout + done.stderr
    for emotion in ("anger", "joy", "sadness", "disgust", "fear", "surprise"):
        assert f"== {emotion} (alpha +3)" in done.stdout
    assert "== baseline" in done.stdout and "all 7 requests succeeded" in done.stdout


def test_probe_results_equal_direct_requests(base_url):
    info, results = asyncio.run(probe(base_url + "/v1", api_key=KEY, prompt="Hello!", max_tokens=3, alpha=-2.0))
    assert [r.label for r in results] == ["baseline", *info["emotions"]]
    assert all(r.error is None and r.completion_tokens == 3 for r in results)
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0, timeout=600)

    def direct(extra):
        reply = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hello!"}],
                                               max_tokens=3, temperature=0, extra_body=extra)
        return reply.choices[0].message.content

    thinking_off = {"chat_template_kwargs": {"enable_thinking": False}}
    assert results[0].text == direct(thinking_off)
    fear = info["id_map"]["fear"]
    assert results[1 + fear].text == direct({**thinking_off, "vllm_xargs": {"steering": ["fear", -2.0]}})


def test_failures_give_a_nonzero_exit(base_url):
    wrong_key = run_cli("--base-url", base_url, "--api-key", "wrong", "--max-tokens", "1")
    assert wrong_key.returncode != 0 and "401" in wrong_key.stderr
    too_strong = run_cli("--base-url", base_url, "--max-tokens", "1", "--alpha", "50", key_env=KEY)
    assert too_strong.returncode == 1
    assert too_strong.stdout.count("FAILED") == 6 and "exceeds the server's bound" in too_strong.stdout
    assert "6 of 7 requests failed" in too_strong.stderr
