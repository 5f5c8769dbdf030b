#!/usr/bin/env bash
# Where does emolab's unsteered engine lose to plain vLLM at N=256? (One device call; vLLM parts in /tmp/gpuparts.)
#   1. engine N=256, 200 + 512 tokens: emolab (none, readout) then plain vLLM, 2 repeats each; the readouts a
#      full engine loses are counted in the engine's log (none expected); py-spy samples the engine core's
#      host side during emolab's first unsteered run, nvidia-smi dmon logs clocks and power all along
#   2. scripts/gpu/hook_cost.py: one hooked layer's cost inside a CUDA graph, by part
#   3. emolab unsteered once more, after plain (is the order the difference?)
# Everything lands in $OUT as it is made.
set -uo pipefail
export PYTHONUNBUFFERED=1 VLLM_CACHE_ROOT=/tmp/vllm-cache
. scripts/gpu/prepare.sh >/dev/null || exit 1
nvidia-smi dmon -s pucm -d 1 -o DT > "$OUT/dmon.txt" 2>&1 &
E=(--serve-model /tmp/qwen3-8b --serve-vectors .gpu/ref-bundle --agents 256 --dtype bfloat16 --max-model-len 2048
   --engine-arg load_format=dummy --prompt-tokens 200 --max-tokens 512 --engine-seconds "${SECONDS_PER_RUN:-15}")
(  # once the first request is in, wait for the calibration run to end, then sample the engine core for 10 s
  until grep -q "Passing raw prompts" /tmp/gap1/engine-emolab.log 2>/dev/null; do sleep 1; done
  sleep 14
  pid=$(pgrep -f "EngineCore" | head -1)
  [ -n "$pid" ] && [ -x $PYSPY ] && $PYSPY record --nonblocking -r 97 -d 10 -f raw -p "$pid" \
    -o "$OUT/pyspy_engine.txt" > /dev/null 2>&1
) &
python3 -m emolab.cli bench --engine "${E[@]}" --scenarios none,readout --repeats 2 --compare-plain \
  --output "$OUT/gap1.json" --log-dir /tmp/gap1 2>&1 | grep -E "engine N=|wrote|rror"
{ grep -h "\] repeat" /tmp/gap1/*.log; echo "readouts lost: $(grep -c 'no readout slot' /tmp/gap1/engine-emolab.log)"; } \
  | tee "$OUT/runs.txt"
python3 scripts/gpu/hook_cost.py 64 256 1024 2>&1 | grep -v Warning | tee "$OUT/hook_cost.txt"
python3 -m emolab.cli bench --engine "${E[@]}" --scenarios none --repeats 1 --output "$OUT/gap2.json" \
  --log-dir /tmp/gap2 2>&1 | grep -E "engine N=|rror"
grep -h "\] repeat" /tmp/gap2/*.log | tee -a "$OUT/runs.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
