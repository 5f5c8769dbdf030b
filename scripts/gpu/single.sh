#!/usr/bin/env bash
# One-GPU checks on a lent H100/H200 (vLLM 0.26, Qwen3-8B shape, dummy bf16 weights, graphs on), one
# step per device call; results go to $OUT. The vLLM parts must already lie in /tmp/gpuparts.
#   bash scripts/gpu/single.sh exactness   # scripts/gpu/exactness.py: batch == solo, unsteered == no plugin
#   bash scripts/gpu/single.sh http        # emolab bench over HTTP: N=20 and N=64 (4 client processes)
#   bash scripts/gpu/single.sh engine      # emolab bench --engine: N=64, no HTTP
#   bash scripts/gpu/single.sh soak-start  # emolab soak, 10 min at N=20, detached (outlives the call)
#   bash scripts/gpu/single.sh soak-wait   # wait for it and copy its report
#   bash scripts/gpu/single.sh hfbatch     # HF backend: continuous batching vs one at a time, N=1/8/20
set -euo pipefail
STEP=$1
export PYTHONUNBUFFERED=1
# A stable copy of the tree: a detached soak keeps importing from it after this call returns (so the
# copy is made once, never while the soak runs).
if [ ! -d /tmp/repo/emolab ]; then
    mkdir -p /tmp/repo && cp -r emolab scripts tests pyproject.toml /tmp/repo/ && cp -r .gpu/ref-bundle /tmp/repo/
fi
cd /tmp/repo
. scripts/gpu/prepare.sh >/dev/null
BUNDLE=/tmp/repo/ref-bundle
MODEL=/tmp/qwen3-8b
DUMMY=(--dtype bfloat16 --max-model-len 2048 "--server-arg=--vllm-arg=--load-format dummy")
case "$STEP" in
exactness)
    python3 scripts/gpu/exactness.py "$MODEL" "$BUNDLE" "$OUT/exactness" | tail -30 ;;
http)
    # Runs of N=20 and N=64 agents; enough requests per agent for ~30 s runs at N=64 on one GPU.
    python3 -m emolab.cli bench --serve-model "$MODEL" --serve-vectors "$BUNDLE" --model qwen3-8b "${DUMMY[@]}" \
        --agents 20,64 --scenarios none,mixed --prompt-tokens 200 --max-tokens 256 --requests-per-agent 12 \
        --repeats 2 --client-processes 4 --output "$OUT/bench_http.json" --log-dir /tmp/bench-logs | tail -25 ;;
engine)
    python3 -m emolab.cli bench --engine --serve-model "$MODEL" --serve-vectors "$BUNDLE" --agents 64 \
        --prompt-tokens 200 --max-tokens 512 --repeats 2 --engine-seconds 30 --dtype bfloat16 --max-model-len 2048 \
        --engine-arg load_format=dummy --output "$OUT/bench_engine.json" --log-dir /tmp/engine-logs | tail -15 ;;
hfbatch)
    # The HF backend (the fallback for families vLLM cannot serve) on the Qwen3-8B shape, random bf16 weights
    # built on the GPU: --hf-max-batch 32 vs 1, mixed steering, ~5 min. Runs are short (the serial worker is
    # slow at N=20), so --min-run-seconds 3: the ratios read here are several-fold, not a few percent.
    python3 scripts/bench_hf_batch.py --model "$MODEL" --vectors "$BUNDLE" --load-format dummy --dtype bfloat16 \
        --max-model-len 2048 --agents 1,8,20 --scenarios mixed --prompt-tokens 200 --max-tokens 128 \
        --requests-per-agent 1 --repeats 2 --min-run-seconds 3 --output "$OUT/hf_batch" | tail -20 ;;
soak-start)
    mkdir -p /tmp/soak
    setsid nohup python3 -m emolab.cli soak --serve-model "$MODEL" --serve-vectors "$BUNDLE" --model qwen3-8b \
        --dtype bfloat16 --max-model-len 2048 "--server-arg=--vllm-arg=--load-format dummy" --agents 20 \
        --duration 600 --window 60 --sample-every 10 --max-tokens 256 --prompt-words 150 \
        --output /tmp/soak/soak.json --log-dir /tmp/soak > /tmp/soak/out.txt 2>&1 < /dev/null &
    sleep 5; cat /tmp/soak/out.txt ;;
soak-wait)
    while pgrep -f "emolab.cli soak" >/dev/null; do sleep 10; done
    cp /tmp/soak/soak.json /tmp/soak/out.txt "$OUT/" 2>/dev/null || true
    tail -c 3000 /tmp/soak/server.log > "$OUT/soak_server_tail.log" 2>/dev/null || true
    cat /tmp/soak/out.txt ;;
*)
    echo "unknown step $STEP" >&2; exit 2 ;;
esac
