#!/usr/bin/env bash
# Several benchmark steps in one lease, run one after another by a process that outlives the 10-minute calls
# (a new session: the device tool keeps it running while calls follow back to back). The vLLM parts must lie in
# /tmp/gpuparts (the four calls that carry them).
#   bash scripts/gpu/queue.sh start STEP...   start the steps, detached; each writes to /tmp/queue/out/STEP
#   bash scripts/gpu/queue.sh wait SECONDS    pack what is done into $OUT/results.tgz every 20 s (what comes back
#                                             if the lease ends mid-call) until the queue ends or SECONDS pass
# Steps: gap (unsteered emolab vs plain vLLM at N=256 with plain between two emolab engines: scripts/gpu/gap.sh),
# matrix (issues 26/27: none, readout, controls and plain vLLM at N = 1/20/64/256), http (issue 24: K=4
# API servers, N=256, unsteered, mixed and mixed-null (frontend.sh's SCENARIOS) vs plain vLLM over HTTP), families
# (issue 25: dense and MoE shapes, steered vs unsteered at N=64), sampled (http at temperature 1: unsteered
# text varies too; is the mixed gap the dummy model's one repeated token?), hook (scripts/gpu/hook_cost.py), hfbatch
# (issue 25: the HF backend batched vs serial), wide (issue 24: N=1024 over HTTP).
set -uo pipefail
Q=/tmp/queue
case ${1:?start or wait} in
start)
  shift
  mkdir -p $Q/out $Q/repo
  cp -r emolab scripts tests pyproject.toml $Q/repo/ && mkdir -p $Q/repo/.gpu \
    && cp -r .gpu/ref-bundle .gpu/tools $Q/repo/.gpu/
  cat > $Q/run.sh <<'RUN'
cd /tmp/queue/repo
for step in "$@"; do
  export OUT=/tmp/queue/out/$step; mkdir -p "$OUT"
  echo "$(date +%T) $step start"
  case $step in
    matrix)   PHASE=both READ_AGENTS=${MATRIX_AGENTS:-1,20,64,256} SECONDS_PER_RUN=${MATRIX_SECONDS:-10} \
                REPEATS=${MATRIX_REPEATS:-2} bash scripts/gpu/features.sh ;;
    http)     PHASE=http K=4 RPA=${RPA:-8} bash scripts/gpu/frontend.sh ;;
    sampled)  PHASE=http K=4 RPA=${RPA:-8} TEMPERATURE=1.0 bash scripts/gpu/frontend.sh ;;
    gap)      SECONDS_PER_RUN=${GAP_SECONDS:-20} bash scripts/gpu/gap.sh ;;
    families) PHASE=families PLAIN=0 SECONDS_PER_RUN=${FAMILY_SECONDS:-12} REPEATS=${FAMILY_REPEATS:-2} \
                bash scripts/gpu/features.sh ;;
    hook)     ( . scripts/gpu/prepare.sh > /dev/null && python3 scripts/gpu/hook_cost.py 64 256 1024 4096 ) ;;
    hfbatch)  bash scripts/gpu/single.sh hfbatch ;;
    wide)     PHASE=wide K=4 bash scripts/gpu/frontend.sh ;;
    *)        echo "unknown step $step"; false ;;
  esac > "$OUT/stdout.txt" 2>&1
  rc=$?  # before the echo: its $(date) would set $? to 0
  echo "$(date +%T) $step rc=$rc"
done
echo "$(date +%T) queue done"
RUN
  setsid nohup bash $Q/run.sh "$@" > $Q/log.txt 2>&1 < /dev/null &
  sleep 1; cat $Q/log.txt ;;
wait)
  end=$((SECONDS + ${2:-560}))
  pack() { grep -h "\] repeat" /tmp/engine-*/*.log /tmp/bench-*/*.log > $Q/out/progress.txt 2>/dev/null
           tar -czf "$OUT/results.tgz.tmp" -C $Q out log.txt 2>/dev/null \
             && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"; }
  while [ $SECONDS -lt $end ] && ! grep -q "queue done" $Q/log.txt; do pack; sleep 20; done
  pack
  cat $Q/log.txt $Q/out/progress.txt
  for f in $Q/out/*/stdout.txt; do echo "== $f"; grep -vE "it/s\]|Warning|warn" "$f" | tail -12; done
  true ;;  # the call's status: the steps' own are in log.txt (a step with no output yet is not a failure)
esac
