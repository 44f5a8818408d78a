#!/usr/bin/env bash
# The committed information-plane example: vit-mini on Fashion-MNIST with its base norm (LayerNorm) and
# each IBNorm op, seeds 0-2, information recorded every 50 steps, then `ibnorm info` over the twelve runs
# (seed means, seed spreads, and IB differences to LayerNorm paired by seed). About 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
for norm in base ib_power ib_log ib_tanh; do
  for seed in 0 1 2; do
    .venv/bin/ibnorm train --model vit-mini --norm "$norm" --seed "$seed" --steps 300 --eval-every 100 \
        --info-every 50 --no-progress --out "runs/info/vit-mini/$norm-s$seed"
  done
done
.venv/bin/ibnorm info runs/info/vit-mini/{base,ib_power,ib_log,ib_tanh}-s{0,1,2} --out results/info/vit-mini
