#!/usr/bin/env bash
# Agent simulations on a lent H200 (vLLM 0.26, Qwen3-8B shape, dummy bf16 weights, graphs on), in one call:
# emolab serve with the reference bundle, then scripts/gpu/sim_bench.py: 20 agents x 8 turns and a 256-agent
# wave, steered vs unsteered, alternating, after an untimed warm-up pair, 3 repeats. The vLLM parts must already lie in /tmp/gpuparts.
set -euo pipefail
export PYTHONUNBUFFERED=1
. scripts/gpu/prepare.sh >/dev/null
BUNDLE=$(pwd)/.gpu/ref-bundle
python3 -m emolab.cli serve --vectors "$BUNDLE" --model /tmp/qwen3-8b --backend vllm --port 8000 --dtype bfloat16 \
    --max-model-len 4096 --max-num-seqs 256 --served-model-name qwen3-8b "--vllm-arg=--load-format dummy" \
    > /tmp/serve.log 2>&1 &
for i in $(seq 1 300); do curl -sf localhost:8000/health >/dev/null && break; sleep 2; done
curl -sf localhost:8000/health >/dev/null || { tail -40 /tmp/serve.log; exit 1; }
grep -m3 -E "CUDA graph|cudagraph|Graph capturing" /tmp/serve.log || true
python3 scripts/gpu/sim_bench.py --base-url http://127.0.0.1:8000/v1 --agents 20 --turns 8 --max-tokens 256 \
    --repeats 3 --out /tmp/sim20b
cp /tmp/sim20b/sim_bench.json "$OUT/sim_bench_20.json"
python3 scripts/gpu/sim_bench.py --base-url http://127.0.0.1:8000/v1 --agents 256 --turns 2 --max-tokens 128 \
    --repeats 3 --out /tmp/sim256b
cp /tmp/sim256b/sim_bench.json "$OUT/sim_bench_256.json"
grep -c " 500 \| 400 " /tmp/serve.log || true
tail -c 4000 /tmp/serve.log > "$OUT/serve_tail.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
