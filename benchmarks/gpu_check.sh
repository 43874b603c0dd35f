#!/usr/bin/env bash
# The GPU check of the memory estimate (docs/gpu-estimate.md), for whoever has a CUDA GPU.
# Runs, in under 8 minutes on one H100/H200:
#   1. the gpu-marked tests (the allocator model and `plan --validate` against the real GPU);
#   2. `enact-bench plan --validate` for the five families with and without ENACT at batch 1 and 2
#      (800x1333): the real training step beside the estimate (max_memory_allocated/reserved, NVML);
#   3. a markdown table of predicted vs measured: $OUT/gpu_check.md (put it in docs/gpu-estimate.md).
# Usage: benchmarks/gpu_check.sh [OUT_DIR] [GPU_NAME]   (GPU_NAME from predict/gpus.py, default h100-80gb)
set -euo pipefail

OUT=${1:-reports/gpu_check}
GPU=${2:-h100-80gb}
PY=${PYTHON:-python}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing to check" >&2
  exit 2
fi
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)' | tee "$OUT/device.txt"

start=$(date +%s)
# 1. gpu-marked tests (about 1-2 minutes)
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$OUT/pytest_gpu.txt" | tail -3 || \
  echo "gpu_check: gpu-marked tests failed or timed out (see $OUT/pytest_gpu.txt)" >&2

# 2. --validate per family: original and ENACT at batch 1 and 2 (each a real step on the GPU)
DETECTORS="detr_r50 conditional_detr_r50 anchor_detr_r50_dc5 deformable_detr_r50 dino_r50_4scale"
for det in $DETECTORS; do
  t0=$(date +%s)
  timeout 150 "$PY" -m enact_bench.cli plan "$det" --gpu "$GPU" --image-size 800x1333 -b 1 -b 2 \
    --variants original,enact --validate --json "$OUT/$det.json" > "$OUT/$det.txt" 2>&1 || \
    echo "gpu_check: $det failed or timed out (see $OUT/$det.txt)" >&2
  echo "$det: $(( $(date +%s) - t0 )) s"
done

# 3. the table
files=$(ls "$OUT"/*.json 2>/dev/null || true)
if [ -n "$files" ]; then
  # shellcheck disable=SC2086
  "$PY" benchmarks/gpu_check_table.py "$OUT/gpu_check.md" $files
  cat "$OUT/gpu_check.md"
fi
echo "gpu_check: $(( $(date +%s) - start )) s in all; results in $OUT"
