#!/usr/bin/env bash
# The GPU rows of the README's Speed section: benchmarks/speed.py on CUDA, fp32 and bf16 (autocast), eager
# (all three models, training step and memory included) and under torch.compile (inference, one size).
#
#   bash benchmarks/gpu.sh            # PYTHON=... to pick the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
for dtype in fp32 bf16; do
    $py benchmarks/speed.py --device cuda --threads 8 --dtype $dtype --sizes 128 256 512 --runs 20
done
for dtype in fp32 bf16; do
    $py benchmarks/speed.py --device cuda --threads 8 --dtype $dtype --sizes 256 --runs 20 --compile \
        --no-train --no-memory --models msrasr swinir
done
