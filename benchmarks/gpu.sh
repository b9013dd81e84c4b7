#!/usr/bin/env bash
# benchmarks/speed.py on one CUDA GPU, in one call: eager then torch.compile, fp32 then bf16 (autocast),
# inference and the training step, the light suite (MSRA-SR, SwinIR) and the peers suite (SRFormer, DAT,
# Omni-SR, ATD, SAFMN, SPAN; skipped with a note when spandrel is not importable). Every step runs under
# `timeout`, capped by what is left of BUDGET seconds, so a slow compile costs its own step and no more;
# the cheap eager steps run first. Output goes to stdout and, when $OUT is set, to $OUT/gpu_speed.txt.
#
#   bash benchmarks/gpu.sh                # PYTHON=... picks the interpreter, BUDGET=... the total seconds
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
budget=${BUDGET:-540}
log=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && log=$OUT/gpu_speed.txt && : > "$log"; fi
start=$SECONDS

step() {  # step CAP_SECONDS ARGS...: one speed.py run, at most CAP seconds and what is left of the budget
    local cap=$1; shift
    local left=$((budget - (SECONDS - start)))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 20 ]; then
        echo "## skipped (budget spent): speed.py $*" | tee -a "$log"; return
    fi
    echo "## speed.py $* (limit ${limit}s)" | tee -a "$log"
    timeout -k 5 "$limit" "$py" benchmarks/speed.py --device cuda --threads 8 "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && echo "## TIMED OUT after ${limit}s" | tee -a "$log"
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && echo "## exit status $rc" | tee -a "$log"
    echo | tee -a "$log"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; git rev-parse --short HEAD; } \
    2>&1 | tee -a "$log"
peers=1
"$py" -c 'import spandrel, spandrel_extra_arches' 2>/dev/null || {
    peers=0; echo "## spandrel missing (pip install -e .[bench]): peers suite skipped" | tee -a "$log"; }

for dtype in fp32 bf16; do
    step 60 --dtype $dtype --sizes 128 256 512 --patches 16 32 64 --runs 20
done
if [ $peers = 1 ]; then
    for dtype in fp32 bf16; do
        step 90 --suite peers --dtype $dtype --sizes 128 256 512 --patches 64 --runs 10
    done
fi
for dtype in fp32 bf16; do
    step 120 --compile --dtype $dtype --sizes 256 --patches 64 --runs 20 --no-memory --models msrasr swinir
done
if [ $peers = 1 ]; then
    for dtype in fp32 bf16; do
        step 150 --suite peers --compile --dtype $dtype --sizes 256 --patches 64 --runs 10 --no-memory
    done
fi
echo "## total $((SECONDS - start))s" | tee -a "$log"
