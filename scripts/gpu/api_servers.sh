#!/usr/bin/env bash
# One H200 call (vLLM 0.26, Qwen3-8B shape, dummy bf16, graphs on): emolab bench over HTTP at N=256 with one and
# with four API-server processes, unsteered and mixed, 8 client processes, 2 repeats (issue 24's first look; the
# full plan is in docs/benchmarks.md). The vLLM parts must already lie in /tmp/gpuparts.
set -euo pipefail
export PYTHONUNBUFFERED=1
. scripts/gpu/prepare.sh >/dev/null
D=(--dtype bfloat16 --max-model-len 2048)
for K in ${KS:-4 1}; do
  python3 -m emolab.cli bench --serve-model /tmp/qwen3-8b --serve-vectors .gpu/ref-bundle --model qwen3-8b "${D[@]}" \
    "--server-arg=--vllm-arg=--load-format dummy" --server-arg=--api-server-count=$K \
    --agents ${AGENTS:-256} --scenarios none,mixed --prompt-tokens 200 --max-tokens 256 --requests-per-agent ${RPA:-6} \
    --repeats 2 --client-processes 8 --output "$OUT/bench_api$K.json" --log-dir /tmp/bench-api$K 2>&1 | tail -14 \
    || { tail -30 /tmp/bench-api$K/*.log; }
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
