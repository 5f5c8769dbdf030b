#!/usr/bin/env bash
# Issues 25/26/27 on one GPU (vLLM 0.26, dummy bf16 weights, graphs on), engine level (offline vllm.LLM, no HTTP),
# each phase one 10-minute device call after the four calls that carry vLLM's parts (/tmp/gpuparts):
#   PHASE=families  steered (mixed) vs unsteered at N=64 for a dense and a MoE family beside Qwen3: Llama 2 7B's
#                   shape (transformers' LlamaConfig defaults, vocabulary widened to the Qwen3 tokenizer's) and
#                   Qwen3-MoE (transformers' Qwen3MoeConfig defaults: 24 layers, 128 experts, 8 active), random
#                   bundles of their shapes at three middle layers
#   PHASE=readout   issue 26: every request asks for its readout vs none vs plugin not loaded, Qwen3-8B shape,
#                   N = 64, 256 (READ_AGENTS to change), 200 + 512 tokens
#   PHASE=controls  issue 27: every request its own scope/mode mix vs unsteered vs plugin not loaded, likewise
#   PHASE=both      readout and controls in one engine (one load saved): none, readout, controls at READ_AGENTS
#   PHASE=small     both at N = 1, 20
# SECONDS_PER_RUN sets the length of each run (default 25 s, 20 s for small), REPEATS their number (default 2);
# PLAIN=0 leaves out the engine without the plugin (families: the goal there is steered / unsteered, both in the
# one engine).
# Results: $OUT/*.json; each ratio in the printed table is measured side by side in one engine.
set -euo pipefail
export PYTHONUNBUFFERED=1 VLLM_CACHE_ROOT=/tmp/vllm-cache
. scripts/gpu/prepare.sh >/dev/null
ENGINE=(--dtype bfloat16 --max-model-len 2048 --engine-arg load_format=dummy --prompt-tokens 200 --max-tokens 512)
PLAIN_ARG=(--compare-plain)
[ "${PLAIN:-1}" = 0 ] && PLAIN_ARG=()
run_engine() {  # LABEL MODEL BUNDLE AGENTS SCENARIOS SECONDS
  python3 -m emolab.cli bench --engine --serve-model "$2" --serve-vectors "$3" --agents "$4" --scenarios "$5" \
    --repeats "${REPEATS:-2}" --engine-seconds "${SECONDS_PER_RUN:-$6}" "${PLAIN_ARG[@]}" "${ENGINE[@]}" \
    --output "$OUT/$1.json" --log-dir "/tmp/engine-$1" 2>&1 | grep -E "engine N=|wrote" \
    || { tail -40 /tmp/engine-$1/*.log; exit 1; }
}
case ${PHASE:?set PHASE} in
families)
  python3 - <<'PY'
import json, shutil
from pathlib import Path
import numpy as np
from transformers import LlamaConfig, Qwen3MoeConfig
from emolab.core.bundle import EmotionBundle
qwen = Path("/tmp/qwen3-8b")
for name, config in (("llama2-7b-shape", LlamaConfig(vocab_size=151936, torch_dtype="bfloat16")),
                     ("qwen3-moe-shape", Qwen3MoeConfig(torch_dtype="bfloat16"))):
    out = Path("/tmp") / name
    out.mkdir(exist_ok=True)
    config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
    config.save_pretrained(out)
    for f in qwen.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt"):
            shutil.copy(f, out / f.name)
    layers = config.num_hidden_layers
    chosen = [layers // 2 - 1, layers // 2, layers // 2 + 1]
    rng = np.random.default_rng(0)
    emotions = ["anger", "joy", "sadness", "disgust", "fear", "surprise"]
    vectors = {e: (rng.standard_normal((3, config.hidden_size)) * 2).astype(np.float32) for e in emotions}
    EmotionBundle(emotions, chosen, vectors, {"num_layers": layers, "model": str(out)}).save(f"/tmp/{name}-bundle")
    print(name, type(config).__name__, "layers", layers, "hidden", config.hidden_size, "chosen", chosen)
PY
  run_engine dense /tmp/llama2-7b-shape /tmp/llama2-7b-shape-bundle 64 none,mixed 25
  run_engine moe /tmp/qwen3-moe-shape /tmp/qwen3-moe-shape-bundle 64 none,mixed 25 ;;
readout)
  run_engine readout /tmp/qwen3-8b .gpu/ref-bundle "${READ_AGENTS:-64,256}" none,readout 25 ;;
both)
  run_engine both /tmp/qwen3-8b .gpu/ref-bundle "${READ_AGENTS:-64,256}" none,readout,controls 25 ;;
controls)
  run_engine controls /tmp/qwen3-8b .gpu/ref-bundle "${READ_AGENTS:-64,256}" none,controls 25 ;;
small)
  run_engine small /tmp/qwen3-8b .gpu/ref-bundle 1,20 none,readout,controls 20 ;;
esac
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
