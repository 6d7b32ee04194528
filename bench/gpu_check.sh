#!/usr/bin/env bash
# The GPU path, checked in one go on a machine with a CUDA device (under 8 minutes):
#   bash bench/gpu_check.sh [OUT_DIR]
# 1. the tests marked `cuda` (load on CUDA, predictions equal the CPU's, the batcher, a live server's /readyz);
# 2. the forward and a 12-MP photo end to end on the GPU (bench/gpu_forward.py);
# 3. ours against the tutorial baseline over HTTP, both on the GPU, leaf and phone photo, 1 and 16 clients.
# Results land in OUT_DIR (default: artifacts/gpu); record them in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-artifacts/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-.venv/bin/python}"
PYTEST="${PYTEST:-.venv/bin/pytest}"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.csv" || true

echo "== 1. tests marked cuda"
timeout 240 "$PYTEST" -m cuda -q -rs tests/test_cuda.py 2>&1 | tee "$OUT/pytest-cuda.txt"

echo "== 2. forward and 12-MP photo on the GPU"
timeout 120 "$PY" -m bench.gpu_forward --json "$OUT/gpu_forward.json"

echo "== 3. ours vs the baseline over HTTP, both on the GPU"
TOMATO_DEVICE=cuda timeout 200 "$PY" -m bench.run --systems ours,baseline --inputs leaf,phone --clients 1,16 \
  --duration 8 --warmup 2 --interleaved-rounds 0 --variants none --overload none \
  --out "$OUT/gpu_bench.md" --chart "$OUT/gpu_bench.png" --json "$OUT/gpu_bench.json"
echo "done: $OUT"
