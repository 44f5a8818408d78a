"""Claim 4's stability test: each norm's rate ladder, climbed until a run diverges, and its largest stable rate."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Optional

from .. import reproduce as R
from .common import max_loss_rise, metric


def ladders(runs: list[dict]) -> dict[tuple[str, str], dict[float, dict]]:
    """(model, norm) -> {rate: run} over the tuning and stability runs of the norms the test covers."""
    out: dict = defaultdict(dict)
    for r in runs:
        c = r["config"]
        if r.get("stage") in ("tune", "stability") and c["norm"] in R.STABILITY_NORMS:
            out[(c["model"], c["norm"])][c["lr"]] = r
    return out


def largest_stable(per_rate: dict[float, dict]) -> Optional[float]:
    """The largest rate below every diverged one (None while the ladder has neither diverged nor reached
    LR_MAX: the test has not finished)."""
    rates = sorted(per_rate)
    broke = [lr for lr in rates if R.diverged(per_rate[lr])]
    if not broke and (not rates or rates[-1] < R.LR_MAX * 0.999):
        return None
    stable = [lr for lr in rates if not broke or lr < broke[0]]
    return stable[-1] if stable else 0.0


def stability_section(runs: list[dict]) -> tuple[list[str], dict]:
    """The ladders as a table; returns its lines and (model, norm) -> largest stable rate (None: still climbing)."""
    lines = ["## Stability (claim 4; exploratory)", "",
             f"*Exploratory.* Each norm's tuning grid, then the next rate up the ladder (×3 steps) at the tuning budget "
             f"and seed {R.TUNE_SEED}, until a run diverges (a non-finite loss, or a training loss at the end above its "
             f"start) or {R.LR_MAX:g} is reached. A test that can fail: a norm that breaks at a lower rate than the base "
             "norm shows here. Each cell: the validation score, or where the run diverged; the largest loss rise in "
             "brackets. With gradient clipping at 1.0 and a warmup, a run can end below its starting loss while its "
             "score collapses (read the scores near the top of each ladder): the rule, fixed before the runs, counts "
             "that run as stable.", ""]
    table = ladders(runs)
    stable = {k: largest_stable(v) for k, v in table.items()}
    if not table:
        return lines + ["No run of this stage has finished yet.", ""], stable
    lines += ["| family | norm | rates tried: score (largest loss rise) | largest stable rate |", "|---|---|---|---|"]
    for (model, norm), per_rate in sorted(table.items(), key=lambda kv: (list(R.FAMILIES).index(kv[0][0]),
                                                                         R.STABILITY_NORMS.index(kv[0][1]))):
        cells = []
        for lr in sorted(per_rate):
            r = per_rate[lr]
            if "final" not in r:
                cells.append(f"{lr:g}: non-finite at step {r['diverged_at']}")
            else:
                tag = " **diverged**" if R.diverged(r) else ""
                cells.append(f"{lr:g}: {metric(r):.4f} ({max_loss_rise(r.get('curve', [])):.3f}){tag}")
        s = stable[(model, norm)]
        lines.append(f"| {model} | {norm} | {'; '.join(cells)} | {'climbing' if s is None else f'{s:g}'} |")
    past = past_the_base_best(table)
    if past:
        lines += ["", "Past the base norm's best rate (descriptive, one seed per cell, not part of the rule): the cells "
                  "where an op scores better than the base norm at the same rate (a diverged run loses), out of those "
                  "where both ran. "
                  + "; ".join(f"{model} {wins} of {cells}" for model, (wins, cells) in past.items()) + "."]
    return lines + [""], stable


def _rank(r: dict) -> float:
    """Higher is better; a run that diverged (by the rule above) ranks last."""
    return -math.inf if R.diverged(r) else R.score(r)


def past_the_base_best(table: dict[tuple[str, str], dict[float, dict]]) -> dict[str, tuple[int, int]]:
    """model -> (cells an op beats the base norm in, cells compared), over the rates above the base norm's best
    on its ladder, where both ran; a diverged run loses, and ties count as not better. Models whose ladders are
    incomplete are left out."""
    out = {}
    for model in R.FAMILIES:
        base = table.get((model, "base"), {})
        ops = [n for n in R.STABILITY_NORMS if n != "base" and (model, n) in table]
        if not base or not ops or largest_stable(base) is None or any(largest_stable(table[(model, n)]) is None
                                                                      for n in ops):
            continue
        best = max(base, key=lambda lr: _rank(base[lr]))
        wins = cells = 0
        for n in ops:
            for lr, r in table[(model, n)].items():
                if lr > best and lr in base:
                    cells += 1
                    wins += _rank(r) > _rank(base[lr])
        out[model] = (wins, cells)
    return out
