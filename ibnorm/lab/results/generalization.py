"""Claim 3: the generalization gap on a 5k subset."""
from __future__ import annotations

from .. import reproduce as R
from .common import _ms, by_seed, versus


def generalization_section(runs: list[dict], ixt: dict) -> tuple[list[str], dict]:
    gen = [r for r in runs if r.get("stage") == "generalization"]
    lines = ["## Generalization (claim 3)", "",
             f"Fixed subset of {R.GENERALIZATION_SUBSET:,} training images; gap = train accuracy − test accuracy "
             "(smaller is better). Δ gap is paired by seed against the base norm. I(X;T): the same norm's mean over "
             "layers in the information table (main-table models), since the claimed bound tightens with it.", ""]
    comparisons = {}
    if not gen:
        return lines + ["No run of this stage has finished yet.", ""], comparisons
    tr = by_seed(gen, lambda r: r["final"].get("train_acc") if "final" in r else None)
    te = by_seed(gen)
    gap = {k: {s: tr[k][s] - te[k][s] for s in tr[k] if s in te.get(k, {})} for k in tr}
    lines += ["| family | norm | train acc | test acc | gap | Δ gap vs base [95% CI] | verdict | I(X;T) |",
              "|---|---|---|---|---|---|---|---|"]
    for (model, norm) in sorted(gap, key=lambda k: (list(R.FAMILIES).index(k[0]), k[1] != "base", k[1])):
        p, delta, verdict = versus(gap[(model, norm)], None if norm == "base" else gap.get((model, "base"), {}), False)
        if p is not None:
            comparisons[(model, norm)] = (p, verdict)
        lines.append(f"| {model} | {norm} | {_ms(list(tr[(model, norm)].values()), 4)} | "
                     f"{_ms(list(te[(model, norm)].values()), 4)} | {_ms(list(gap[(model, norm)].values()), 4)} | {delta} | {verdict} | "
                     f"{f'{ixt[(model, norm)]:.3f}' if (model, norm) in ixt else '—'} |")
    return lines + [""], comparisons
