#!/bin/bash
# Issue 26's GPU check, in one command and under 15 minutes: the kernel benchmark (benchmarks/gpu.py, with the choice
# table that impl="auto" reads under torch.compile), then a bf16 compiled step of every scale preset and 200 trainer
# steps of gpt2-124m, base against ib_tanh (benchmarks/gpu_scale.py). Each part has its own time bound, and each
# writes its files as it goes, so a part that runs long costs only itself.
#   bash scripts/gpu_check.sh            # on a CUDA machine: results into benchmarks/results and the choice table
#   bash scripts/gpu_check.sh --smoke    # the same code on the CPU at reduced size (the test of this script)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-benchmarks/results}
if [ "${1:-}" == "--smoke" ]; then
  KERNEL=(--device cpu --smoke --rounds 1 --out "$OUT"); SCALE=(--device cpu --smoke --presets llama-60m,resnet18 --train-steps 2 --out "$OUT")
else
  KERNEL=(--rounds 5 --out "$OUT" --choice ibnorm/kernels/cuda_choice.json); SCALE=(--out "$OUT" --budget-s 480)
fi
rc=0
PYTHONPATH=. timeout 300 "$PY" benchmarks/gpu.py "${KERNEL[@]}" || { echo "gpu_check: benchmarks/gpu.py failed or ran past 300 s" >&2; rc=1; }
PYTHONPATH=. timeout 560 "$PY" benchmarks/gpu_scale.py "${SCALE[@]}" || { echo "gpu_check: benchmarks/gpu_scale.py failed or ran past 560 s" >&2; rc=1; }
exit $rc
