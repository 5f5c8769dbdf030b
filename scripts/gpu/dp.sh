#!/usr/bin/env bash
# Issue 28, item 1: `emolab serve --data-parallel-size 2` on a two-GPU host (nvidia-h200-x2 or nvidia-h100-x2;
# vLLM 0.26, Qwen3-8B shape, dummy bf16 weights, graphs on), in two 10-minute device calls, back to back:
#   bash scripts/gpu/dp.sh start   # call 1: starts scripts/gpu/dp.py run detached (it needs ~17 min), follows it
#                                  # for ~9 min, returns what is done ($OUT: off/checks/bench JSON, progress.log)
#   bash scripts/gpu/dp.sh wait    # call 2: follows it to the end, returns everything (soak.json: the verdict; soak_report.json: emolab soak's own)
# Carry .gpu/ref-bundle; the vLLM parts must already lie in /tmp/gpuparts (scripts/gpu/prepare.sh). What runs:
# plain vLLM DP=2 with the plugin not loaded (baseline), then emolab serve DP=2: exactness (unsteered == no
# plugin, batch == solo, each replica pinned alike, per-worker /metrics counts), emolab bench unsteered and
# mixed at N=64 and 256 (8 client processes), a 10-minute soak at N=40 with every server process's RSS.
# `wait` may be called again if the run is not done. CPU dry run of the same path (a tiny model, small N, a
# 40-s soak, no GPU): DRY=1 PY=/path/to/python bash scripts/gpu/dp.sh start, then DRY=1 ... wait.
set -euo pipefail
STEP=${1:?usage: dp.sh start|wait [more dp.py run flags]}
shift
export PYTHONUNBUFFERED=1 VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-/tmp/vllm-cache}
WORK=${WORK:-/tmp/dp}
OUT=${OUT:-$WORK/out}
PY=${PY:-python3}
LIMIT=${LIMIT:-565}  # seconds this call follows the run (a device call may last 600; the summary imports torch)
mkdir -p "$WORK" "$OUT"

if [ "${DRY:-0}" = 1 ]; then
    export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} EMOLAB_CACHE=${EMOLAB_CACHE:-$PWD/.cache/emolab}
    MODEL=${MODEL:-$($PY -c 'from emolab.core.models import resolve_model; print(resolve_model("smollm2"))')}
    BUNDLE=${BUNDLE:-vectors/smollm2}
    ARGS=(--dtype float32 --load-format auto --max-model-len 1024 --eager --extra "--max-num-seqs 8"
          --agents 4,8 --requests-per-agent 2,1 --client-processes 2 --bench-max-tokens 16 --min-run-seconds 1
          --soak-seconds "${SOAK_SECONDS:-40}" --soak-agents 4 --soak-window 10 --soak-max-tokens 16)
else
    MODEL=${MODEL:-/tmp/qwen3-8b}
    BUNDLE=${BUNDLE:-.gpu/ref-bundle}
    ARGS=()
fi

follow() {  # wait until the run ends or this call's time is up; then copy what exists to $OUT and summarize
    while kill -0 "$(cat "$WORK/pid")" 2>/dev/null && [ "$SECONDS" -lt "$LIMIT" ]; do sleep 5; done
    if kill -0 "$(cat "$WORK/pid")" 2>/dev/null; then
        echo "STILL RUNNING: call 'bash scripts/gpu/dp.sh wait' next"
    else
        echo "dp.py run has ended"
    fi
    cp "$WORK"/*.json "$WORK"/progress.log "$OUT"/ 2>/dev/null || true
    for f in "$WORK"/*.log "$WORK"/*.txt; do
        [ -f "$f" ] && tail -c 20000 "$f" > "$OUT/$(basename "$f").tail"
    done
    tail -5 "$WORK/run.txt" 2>/dev/null || true
    (cd "$REPO" && "$PY" scripts/gpu/dp.py status "$WORK") | tail -150
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
}

case "$STEP" in
start)
    if [ -f "$WORK/pid" ] && kill -0 "$(cat "$WORK/pid")" 2>/dev/null; then
        echo "a run is already going (pid $(cat "$WORK/pid")): following it"
    else
        # A stable copy of the tree: the detached run imports from it after this call returns.
        REPO=${REPO:-/tmp/repo-dp}
        rm -rf "$REPO" "$WORK"/*.json "$WORK"/*.log "$WORK"/*.txt && mkdir -p "$REPO"
        cp -r emolab scripts tests vectors pyproject.toml "$REPO"/
        [ -d .gpu/ref-bundle ] && mkdir -p "$REPO/.gpu" && cp -r .gpu/ref-bundle "$REPO/.gpu/"
        cd "$REPO"
        if [ "${DRY:-0}" = 1 ]; then export PYTHONPATH=$REPO; else . scripts/gpu/prepare.sh >/dev/null; fi
        [ -e "$BUNDLE/metadata.json" ] || { echo "no bundle at $BUNDLE (carry .gpu/ref-bundle)" >&2; exit 2; }
        setsid nohup "$PY" scripts/gpu/dp.py run "$MODEL" "$BUNDLE" "$WORK" "${ARGS[@]}" "$@" \
            > "$WORK/run.txt" 2>&1 < /dev/null &
        echo $! > "$WORK/pid"
        echo "$REPO" > "$WORK/repo"
        echo "dp.py run started (pid $(cat "$WORK/pid")), model $MODEL, bundle $BUNDLE"
    fi
    REPO=$(cat "$WORK/repo")
    follow ;;
wait)
    [ -f "$WORK/pid" ] || { echo "nothing started: run 'bash scripts/gpu/dp.sh start' first" >&2; exit 2; }
    REPO=$(cat "$WORK/repo")
    if [ "${DRY:-0}" = 1 ]; then export PYTHONPATH=$REPO; else export PYTHONPATH=/tmp/site:$REPO; fi
    follow ;;
*)
    echo "unknown step $STEP (start or wait)" >&2; exit 2 ;;
esac
