"""The decisive statistics of a paired comparison: the test, its power, and equivalence.

For a norm against its family's base norm over paired seeds: the 95% interval, the two-sided paired-t p-value
(Holm-adjusted over the family of comparisons it belongs to), the minimum detectable difference at 80% power with
the seeds in, the seeds needed to detect the smallest effect of interest, and TOST at that bound (the 90% interval
inside it). The verdict rule, fixed before the decisive sweep's runs:
- "better" / "worse": the adjusted p-value is below 0.05, in the direction the metric prefers / does not;
- "equivalent": otherwise, when the 90% interval lies inside +-bound (no effect as large as the bound);
- "inconclusive": otherwise. The data cannot tell.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .. import reproduce as R
from ..stats import (
    Paired,
    equivalent,
    holm,
    min_detectable,
    paired,
    seeds_needed,
    t_p_value,
)
from ..tasks import task_kind


@dataclass(frozen=True)
class Decision:
    p95: Paired  # the mean difference and its 95% interval
    p90: Paired  # ... and its 90% interval (TOST)
    p_value: float  # two-sided paired t
    p_adjusted: float  # Holm over its family (the p-value itself when it has no family)
    mdd: float  # minimum detectable difference at POWER with these seeds
    seeds_for_bound: Optional[int]  # seeds to detect an effect the size of the bound (None: more than 1000)
    bound: float
    verdict: str


def bound_of(model: str) -> float:
    return R.EQUIVALENCE_BOUND[task_kind(model).name]


def decide(values: dict[int, float], base: dict[int, float], model: str,
           p_adjusted: Optional[float] = None) -> Optional[Decision]:
    """The decision for ``values`` against ``base`` (paired by seed); ``p_adjusted``: its Holm-adjusted p-value,
    when it belongs to a family (default: the unadjusted one)."""
    seeds = sorted(set(values) & set(base))
    if len(seeds) < 2:
        return None
    a, b = [values[s] for s in seeds], [base[s] for s in seeds]
    p95, p90 = paired(a, b), paired(a, b, confidence=0.9)
    p = t_p_value(p95)
    adj = p if p_adjusted is None else p_adjusted
    bound, higher = bound_of(model), task_kind(model).higher_is_better
    if adj < R.ALPHA and p95.mean != 0:
        verdict = "better" if (p95.mean > 0) == higher else "worse"
    elif equivalent(p90, bound):
        verdict = "equivalent"
    else:
        verdict = "inconclusive"
    return Decision(p95, p90, p, adj, min_detectable(p95.sd, p95.n, R.ALPHA, R.POWER),
                    seeds_needed(bound, p95.sd, R.ALPHA, R.POWER), bound, verdict)


def decide_family(pairs: dict[tuple, tuple[dict, dict]]) -> dict[tuple, Decision]:
    """Decisions for a family of comparisons ((model, norm) -> (values, base)) with Holm over the family."""
    raw = {k: decide(v, b, k[0]) for k, (v, b) in pairs.items()}
    adjusted = holm({k: d.p_value for k, d in raw.items() if d is not None})
    return {k: decide(pairs[k][0], pairs[k][1], k[0], adjusted[k]) for k, d in raw.items() if d is not None}


def verdict_text(d: Decision, model: str) -> str:
    if d.verdict == "equivalent":
        return f"equivalent: no effect as large as {R.EQUIVALENCE_TEXT[task_kind(model).name]}"
    return d.verdict


def _num(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if abs(x) >= 10 ** -digits or x == 0 else f"{x:.1e}"


def _p(x: float) -> str:
    if math.isnan(x):
        return "—"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.0e}"


def decision_cells(d: Optional[Decision], model: str) -> list[str]:
    """The table cells of a decision: Δ [95% CI], MDD, seeds for the bound, p (adjusted), Δ [90% CI], verdict."""
    if d is None:
        return ["—"] * 6
    spec = "+.4f" if max(abs(d.p95.mean), abs(d.p95.low), abs(d.p95.high)) >= 1e-4 else "+.1e"
    ci95 = f"{d.p95.mean:{spec}} [{d.p95.low:{spec}}, {d.p95.high:{spec}}]"
    ci90 = f"[{d.p90.low:{spec}}, {d.p90.high:{spec}}]"
    need = "> 1000" if d.seeds_for_bound is None else str(d.seeds_for_bound)
    return [ci95, _num(d.mdd), need, _p(d.p_adjusted), ci90, verdict_text(d, model)]


DECISION_HEADER = ("Δ vs base [95% CI] | MDD, 80% power | seeds to detect ±bound | p (Holm) | 90% CI | verdict")
