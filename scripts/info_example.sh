#!/usr/bin/env bash
# The committed information-plane example: vit-mini on Fashion-MNIST with its base norm (LayerNorm) and
# each IBNorm op, information recorded every 50 steps, then `ibnorm info` over the four runs.
set -euo pipefail
cd "$(dirname "$0")/.."
for norm in base ib_power ib_log ib_tanh; do
  .venv/bin/ibnorm train --model vit-mini --norm "$norm" --seed 0 --steps 300 --eval-every 100 \
      --info-every 50 --no-progress --out "runs/info/vit-mini/$norm"
done
.venv/bin/ibnorm info runs/info/vit-mini/{base,ib_power,ib_log,ib_tanh} --out results/info/vit-mini
