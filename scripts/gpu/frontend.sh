#!/usr/bin/env bash
# Issue 24 on one H200 (vLLM 0.26, Qwen3-8B shape, dummy bf16, graphs on): the HTTP front end against the engine.
# One phase per 10-minute device call (the vLLM parts already in /tmp/gpuparts):
#   PHASE=engine  the engine at N=256 (offline vllm.LLM, no HTTP), unsteered, mixed and mixed-null
#   PHASE=http    emolab (SCENARIOS, default unsteered, mixed, mixed-null) and plain vLLM (plugin not loaded)
#                 over HTTP with K API servers (env K, default 1), N=256, both with the same front end; the API
#                 server profiled under load (py-spy, if the wheel lies in .gpu/tools), `top` sampled every 10 s,
#                 and the GPU's clocks and power every second (nvidia-smi dmon: does other text draw other power?;
#                 the bench itself also writes each run's mean SM clock and power into its JSON). TEMPERATURE > 0
#                 samples every request with its own seed (the same in every scenario): unsteered text then
#                 varies as a real model's does, and a gap that came from the dummy model's repeated token goes away
#   PHASE=clients emolab unsteered at N=256 with 1, 4 and 8 client processes (is the client the ceiling?)
#   PHASE=wide    N=1024 agents (mixed) against emolab serve with K API servers: errors and latencies
# Everything lands in $OUT; summarize the profiles here with scripts/gpu/pyspy_summary.py.
set -euo pipefail
export PYTHONUNBUFFERED=1 VLLM_CACHE_ROOT=/tmp/vllm-cache
. scripts/gpu/prepare.sh >/dev/null
D=(--dtype bfloat16 --max-model-len 2048)
M=(--serve-model /tmp/qwen3-8b --serve-vectors .gpu/ref-bundle --model qwen3-8b)
K=${K:-1}

# profile LABEL DELAY SECONDS: once "LABEL ready" shows in the bench's log, wait DELAY s, then sample the server's
# process tree (API servers and engine core) for SECONDS s.
profile() {
  local label=$1 delay=$2 seconds=$3
  until grep -q "  $label ready after" "$OUT/bench_k$K.txt" 2>/dev/null; do sleep 2; done
  sleep "$delay"
  local pid
  pid=$(pgrep -o -f "vllm.entrypoints.openai.api_server|run_vllm_cli" || true)
  [ -n "$pid" ] || { echo "profile $label: no server process" >> "$OUT/profile.log"; return; }
  { echo "== processes during $label"; ps -eo pid,ppid,pcpu,rss,args --forest | grep -v "ps -eo" | cut -c1-200; } \
    >> "$OUT/profile.log" || true
  if [ -x $PYSPY ]; then
    $PYSPY record --subprocesses --nonblocking -r 97 -d "$seconds" -f raw -p "$pid" \
      -o "$OUT/pyspy_${label}_k$K.txt" >> "$OUT/profile.log" 2>&1 || echo "py-spy $label failed" >> "$OUT/profile.log"
  fi
}

case ${PHASE:-http} in
engine)
  python3 -m emolab.cli bench --engine "${M[@]}" --agents 256 --prompt-tokens 200 --max-tokens 256 --repeats 2 \
    --scenarios none,mixed,mixed-null \
    --engine-seconds 30 "${D[@]}" --engine-arg load_format=dummy --output "$OUT/bench_engine.json" \
    --log-dir /tmp/engine 2>&1 | grep -v "it/s\]" | tail -20
  ;;
http)
  T=${TEMPERATURE:+_t$TEMPERATURE}  # sampled runs keep their files and logs apart from greedy ones
  top -b -c -w 250 -d 10 -n 55 -o %CPU | awk '/^top -/{n=0} {n++; if (n <= 22) print}' > "$OUT/top_k$K.txt" &
  TOP=$!
  nvidia-smi dmon -s pucm -d 1 -o DT > "$OUT/dmon_k$K$T.txt" 2>&1 &
  DMON=$!
  profile emolab 75 30 & P1=$!
  profile plain-vllm 45 20 & P2=$!
  python3 -m emolab.cli bench "${M[@]}" "${D[@]}" "--server-arg=--vllm-arg=--load-format dummy" \
    "--server-arg-plain=--load-format=dummy" --api-server-count "$K" --compare-plain \
    --agents 256 --scenarios "${SCENARIOS:-none,mixed,mixed-null}" --prompt-tokens 200 --max-tokens 256 \
    --requests-per-agent "${RPA:-10}" --temperature "${TEMPERATURE:-0}" \
    --repeats "${REPEATS:-2}" --client-processes 8 --output "$OUT/bench_http_k$K$T.json" \
    --log-dir /tmp/bench-k$K$T \
    2>&1 | tee "$OUT/bench_k$K.txt" | tail -16 || { tail -30 /tmp/bench-k$K$T/*.log; }
  kill $TOP $DMON $P1 $P2 2>/dev/null || true
  ;;
clients)
  python3 -m emolab.cli serve --backend vllm --model /tmp/qwen3-8b --vectors .gpu/ref-bundle --port 8100 \
    --served-model-name qwen3-8b "${D[@]}" "--vllm-arg=--load-format dummy" --api-server-count "$K" \
    > /tmp/serve-clients.log 2>&1 &
  SERVER=$!
  until curl -sf localhost:8100/health >/dev/null; do sleep 5; kill -0 $SERVER || { tail -30 /tmp/serve-clients.log; exit 1; }; done
  for C in 1 4 8; do
    python3 -m emolab.cli bench --base-url http://127.0.0.1:8100/v1 --model qwen3-8b --agents 256 --scenarios none \
      --prompt-tokens 200 --max-tokens 256 --requests-per-agent "${RPA:-8}" --repeats 1 --client-processes $C \
      --output "$OUT/bench_clients_c$C.json" 2>&1 | grep -E "repeat" || true
  done
  kill $SERVER
  ;;
wide)
  python3 -m emolab.cli bench "${M[@]}" "${D[@]}" "--server-arg=--vllm-arg=--load-format dummy" \
    "--server-arg=--max-num-seqs=1024" --api-server-count "$K" --agents 1024 --scenarios mixed \
    --prompt-tokens 200 --max-tokens 256 --requests-per-agent "${RPA:-2}" --repeats 1 --client-processes 8 \
    --output "$OUT/bench_wide_k$K.json" --log-dir /tmp/bench-wide 2>&1 | tail -8 || { tail -30 /tmp/bench-wide/*.log; }
  ;;
esac
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
