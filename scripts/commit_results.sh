#!/bin/bash
# Commit the reproduction's finished runs with RESULTS.md and the README's verdict paragraph rebuilt from exactly
# those files (`ibnorm report`).
# A sweep may keep writing while this runs: the report is rebuilt until no new run file landed meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
AREAS="results/reproduction results/generalization results/ablations results/info results/confirmatory results/scale"
list() { for a in $AREAS; do [ -d "$a/runs" ] && find "$a/runs" -name '*.json'; done 2>/dev/null | sort || true; }
for attempt in 1 2 3 4 5; do
  before=$(list)
  .venv/bin/ibnorm report 2>/dev/null
  [ "$before" == "$(list)" ] && break
done
# -A: a run the sweep pruned (its rate choice moved) leaves the tree too; git history keeps it.
git add -A RESULTS.md README.md $(ls -d $AREAS 2>/dev/null)
n=$(echo "$before" | grep -c . || true)
git commit -q -m "reproduce: ${n} runs in results/*/runs, RESULTS.md rebuilt by ibnorm report" -- RESULTS.md README.md results/ && git log --oneline -1
